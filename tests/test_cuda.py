"""The CUDA branches, run for real on a GPU (`make gpu-check`), skipped with the reason elsewhere: the runner's
clocks synchronize (a slow kernel's time lands in TTFT), torch.cuda peaks and NVML memory and energy in the row,
fp32/bf16/fp16 rows, the CLI end to end on a GPU. What needs no GPU (the clocks name the cell's device, the check
script refuses a machine without one) runs everywhere."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.cell import Cell, run_cell
from bench.measure.energy import EnergyMeter
from bench.scenarios import prompts as prompt_scenario
from bench.scenarios import requests as request_scenario
from strategies.core.requests import Request
from strategies.core.sampling import GREEDY

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False); "
                                                     "`make gpu-check` runs these on a GPU machine")
needs_axes = pytest.mark.skip(reason="needs the --attn/--compile runtime axes (issue 13)")


class SlowDecoder:
    """Emits one token per prompt right after queueing ``work`` on the GPU, without waiting for it: only a clock
    that synchronizes puts the work's time before the token's stamp."""

    def __init__(self, work):
        self.work = work

    def generate(self, model, new_cache, prompts, max_new, sampling, emit):
        for i in range(len(prompts)):
            self.work()
            emit(i, [0])
        return SimpleNamespace(tokens=[[0] for _ in prompts])

    def serve(self, model, new_cache, requests, sampling, emit, clock, cache=None):
        return self.generate(model, new_cache, [r.prompt for r in requests], 1, sampling, emit)


def slow_comp(work) -> SimpleNamespace:
    return SimpleNamespace(decoder=SlowDecoder(work), cache_factory=lambda model: None, cache=None)


def test_the_clocks_synchronize_the_cells_device(monkeypatch):
    """Every clock read of both scenarios waits for the cell's device first (a no-op on CPU: recorded here)."""
    synced = []
    for module in (prompt_scenario, request_scenario):
        monkeypatch.setattr(module, "synchronize", synced.append)
    _, _, timings = prompt_scenario.timed_run(slow_comp(lambda: None), None, [[1], [2]], 1, GREEDY, "cuda:3")
    assert synced == ["cuda:3"] * 4 and len(timings) == 2  # start, two emissions, end
    synced.clear()
    request_scenario.timed_serve(slow_comp(lambda: None), None, [Request(0, [1], 1, 0.0)], GREEDY, "cuda:1")
    assert synced == ["cuda:1"] * 3  # the run's start, the emission, the end


def queued_matmuls(target_s: float = 0.1):
    """(work, gpu_s): ``work()`` queues about ``target_s`` of fp16 matrix products and returns at once; gpu_s is
    their time on the GPU, measured with CUDA events. Asserts the queueing really is asynchronous (host time well
    under GPU time: few launches, far from the launch queue's depth), or the test below could not tell."""
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    y = torch.empty_like(x)

    def run(n: int) -> None:
        for _ in range(n):
            torch.mm(x, x, out=y)

    def gpu_time(n: int) -> tuple[float, float]:
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        begin.record()
        run(n)
        end.record()
        host = time.perf_counter() - t0
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / 1000, host

    gpu_time(2)  # cuBLAS warm-up
    per_call = gpu_time(10)[0] / 10
    n = max(1, min(500, math.ceil(target_s / per_call)))
    gpu_s, host_s = gpu_time(n)
    assert host_s < gpu_s / 2, f"queueing {n} products took {host_s:.3f}s of {gpu_s:.3f}s: not asynchronous"
    return (lambda: run(n)), gpu_s


@needs_cuda
def test_ttft_includes_queued_gpu_work_on_both_paths():
    """A decoder that emits right after queueing ~100 ms of GPU work: each request's TTFT must hold that time. An
    unsynchronized clock would stamp the token while the GPU still works, and TTFT would read near zero."""
    work, gpu_s = queued_matmuls()
    _, figures, timings = prompt_scenario.timed_run(slow_comp(work), None, [[1], [2]], 1, GREEDY, "cuda")
    for t in timings:
        assert t.ttft_s >= 0.8 * gpu_s, (t.ttft_s, gpu_s)
    assert figures["e2e_ms"] / 1000 >= 0.8 * 1.5 * gpu_s  # mean of ~1× and ~2× the work
    requests = [Request(i, [i + 1], 1, 0.0) for i in range(2)]
    _, served, duration, _ = request_scenario.timed_serve(slow_comp(work), None, requests, GREEDY, "cuda")
    assert served[0].ttft_s >= 0.8 * gpu_s and served[1].ttft_s >= 0.8 * 2 * gpu_s  # both arrived at t=0
    assert duration >= 0.8 * 2 * gpu_s


@needs_cuda
def test_nvml_energy_counts_gpu_work():
    meter = EnergyMeter("cuda")
    assert meter.source == "nvml", meter.note
    work, gpu_s = queued_matmuls(0.25)
    meter.start()
    t0 = time.perf_counter()
    for _ in range(4):  # ~1 s of products: NVML's counter advances every few tens of milliseconds
        work()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    joules = meter.stop()
    assert joules is not None and 5 * seconds < joules < 2000 * seconds  # between 5 W and 2 kW while busy


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("strategy", ["full", "quant-int8", "paged"])
def test_a_cuda_cell_row_has_device_memory_energy_and_its_dtype(tmp_path, dtype, strategy):
    """One cell on the GPU, in process: torch.cuda peaks cover the cache, NVML reads device memory and energy,
    and the row runs in the dtype it names (a full cache's bytes are the closed form at that dtype's size)."""
    cell = Cell(model="random:tiny-llama", workload="smoke", strategy=strategy, dtype=dtype, device="cuda",
                repeats=2, quality=False, out_dir=str(tmp_path))
    record = run_cell(cell)
    row = record["row"]
    assert (row["status"], row["device"], row["dtype"], row["weights"]) == ("ok", "cuda", dtype, "stock")
    assert row["tokens_per_s"] > 0 and row["ttft_ms"] > 0
    assert row["cuda_peak_allocated_mb"] > 0 and row["cuda_peak_reserved_mb"] >= row["cuda_peak_allocated_mb"]
    assert row["cuda_peak_allocated_mb"] * 2**20 >= row["cache_bytes_peak"] >= row["cache_bytes"] > 0
    assert "nvml_error" not in row and row["nvml_used_mb"] > 0
    assert row["energy_source"] == "nvml", row["energy_note"]
    assert row["energy_j"] >= 0 and row["joules_per_token"] >= 0 and record["spread"]["energy_j"]["n"] == 2
    if strategy == "full":
        assert row["cache_bytes"] == row["cache_bytes_theory"]  # 2-byte elements in bf16/fp16, 4 in fp32
    if strategy == "quant-int8":
        assert row["compression_ratio"] > 1


@needs_cuda
def test_the_cli_on_cuda_writes_gpu_columns_and_matches_naive(tmp_path):
    """The real CLI on a GPU: every cell its own process, a draft model on the device too, lossless strategies
    reproducing naive's greedy tokens, and the CUDA, NVML and energy columns in results.csv and the report."""
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "random:tiny-llama", "--workload",
                           "smoke", "--strategies", "full,speculative,continuous", "--device", "cuda",
                           "--repeats", "1", "--no-quality", "--out", str(tmp_path / "run"), "--no-history"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert [r["strategy"] for r in rows] == ["naive", "full", "speculative", "continuous"]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert r["device"] == "cuda" and r["greedy_agreement"] == "1"
        assert float(r["cuda_peak_allocated_mb"]) > 0 and float(r["nvml_used_mb"]) > 0
        assert r["energy_source"] == "nvml" and r["energy_j"] != ""
    assert "Device memory and energy" in (tmp_path / "run" / "report.md").read_text()


@needs_axes
def test_attn_sdpa_selects_the_flash_kernel_where_available(tmp_path):
    """With `--attn sdpa` on a GPU that has it, the profiler shows a flash-attention kernel in the decode."""


@needs_axes
def test_compile_reduce_overhead_gives_eager_greedy_tokens(tmp_path):
    """`--compile reduce-overhead` (CUDA graphs) reproduces the eager run's greedy tokens."""


@pytest.mark.skipif(HAS_CUDA, reason="with a CUDA device the script would run the whole GPU check")
def test_gpu_check_refuses_a_machine_without_cuda_in_one_line():
    done = subprocess.run(["bash", "tests/gpu_check.sh"], env={**os.environ, "GPU_PYTHON": sys.executable},
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("gpu-check: no CUDA device visible")
