"""The Ray executor on a local Ray instance: the same rows as the local executor, a killed worker is one failed row,
resume reruns only that cell, and a missing Ray is one clear line."""

from __future__ import annotations

import math
import signal
import threading
import time

import psutil
import pytest

from bench.cell import Cell
from bench.cli import main
from bench.executors import make_executor
from bench.executors.local import LocalExecutor
from bench.results.rows import read_jsonl
from bench.runner import run_grid, with_reference

ray = pytest.importorskip("ray")  # in the dev extra, so CI runs these

SAME = ("status", "generated_tokens", "greedy_agreement", "first_divergence", "cache_bytes", "cache_bytes_peak",
        "cache_bytes_theory", "ppl", "lossless")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def cells(out, strategies=("full", "quant-int8")) -> list[Cell]:
    params = {"speculative": {"speculative": {"draft": "layers:1", "k": 2}}}
    grid = [Cell("random:tiny-llama", "smoke", s, params.get(s, {}), repeats=1, threads=1, out_dir=str(out))
            for s in strategies]
    return with_reference(grid)


def by_key(rows):
    return {(r["strategy"], r["params"]): r for r in rows}


def test_ray_gives_the_rows_the_local_executor_gives(tmp_path, local_ray):
    local = by_key(run_grid(cells(tmp_path / "local"), tmp_path / "local", {}, executor=LocalExecutor()))
    remote = by_key(run_grid(cells(tmp_path / "ray"), tmp_path / "ray", {}, executor=make_executor("ray")))
    assert local.keys() == remote.keys()
    for key, row in remote.items():
        assert row["status"] == "ok", row.get("error")
        assert {k: row.get(k) for k in SAME} == {k: local[key].get(k) for k in SAME}, key
        assert row["executor"] == "ray" and local[key]["executor"] == "local"
        assert 0 <= row["executor_overhead_s"] < 60 and row["node"]  # Ray's own per-cell cost is recorded
    assert remote[("full", "")]["greedy_agreement"] == 1.0  # the reference reached the dependents' node


def _kill_first_cell_worker(deadline_s: float) -> int | None:
    """SIGKILL the Ray worker process running a cell task (its title names the task); its pid, or None."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any("_run_cell_task" in part for part in proc.info["cmdline"] or []):
                proc.send_signal(signal.SIGKILL)
                return proc.info["pid"]
        time.sleep(0.05)
    return None


def test_a_killed_worker_is_one_failed_row_and_resume_reruns_only_it(tmp_path, local_ray):
    grid, out = cells(tmp_path, ("full", "quant-int8")), tmp_path
    killed: list[int | None] = []
    killer = threading.Thread(target=lambda: killed.append(_kill_first_cell_worker(120)))
    killer.start()
    rows = run_grid(grid, out, {}, executor=make_executor("ray"))
    killer.join()
    assert killed[0] is not None
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"].startswith("ray task failed — ")
    assert len(rows) == len(grid) and sum(r["status"] == "ok" for r in rows) == len(grid) - 1

    again = run_grid(grid, out, {}, executor=make_executor("ray"), resume=True)
    assert len(again) == len(grid) and all(r["status"] == "ok" for r in again)
    records, _ = read_jsonl(out / "results.jsonl")
    assert len(records) == len(grid)  # nothing doubled: one record per cell
    assert not math.isnan(by_key(again)[(failed[0]["strategy"], "")]["tokens_per_s"])


def test_an_unknown_executor_or_a_missing_ray_is_one_line(monkeypatch, capsys):
    assert main(["run", "--model", "random:tiny-llama", "--workload", "smoke", "--executor", "slurm"]) == 2
    assert "unknown executor 'slurm'; allowed: local, ray, ray:auto" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert main(["run", "--model", "random:tiny-llama", "--workload", "smoke", "--executor", "ray"]) == 2
    assert "needs Ray, an optional dependency: pip install -e '.[ray]'" in capsys.readouterr().err


def test_a_cell_past_its_timeout_on_ray_is_a_failed_row(tmp_path, local_ray):
    grid = [Cell("random:tiny-llama", "smoke", "full", {}, repeats=1, threads=1, out_dir=str(tmp_path))]
    rows = run_grid(grid, tmp_path, {}, timeout_s=0.5, executor=make_executor("ray"))
    assert [r["status"] for r in rows] == ["failed"]
    assert rows[0]["error"].startswith("timed out after 0.5 s (--cell-timeout)") and rows[0]["executor"] == "ray"
