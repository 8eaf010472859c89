"""Measurement value objects and probes: per-request token timing, spread over repeats, peak memory."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RequestTiming:
    """One request's clock readings: ``start`` and the time each generated token was emitted (seconds).

    TPOT is undefined (nan) for a request of one token: there is no time *between* tokens to divide. Means over
    requests skip it (``mean_defined``), as vLLM's bench serve leaves one-token requests out of its TPOT figures."""

    start: float
    stamps: tuple[float, ...]

    @property
    def ttft_s(self) -> float:
        return self.stamps[0] - self.start

    @property
    def e2e_s(self) -> float:
        return self.stamps[-1] - self.start

    @property
    def tpot_s(self) -> float:
        n = len(self.stamps)
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else float("nan")

    @property
    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def defined(values: list[float]) -> list[float]:
    """The values that are not nan (a one-token request's TPOT is undefined, not zero)."""
    return [v for v in values if not math.isnan(v)]


def mean_defined(values: list[float]) -> float:
    """Mean of the values that are defined; nan if none is."""
    values = defined(values)
    return statistics.mean(values) if values else math.nan


def summarize_repeat(requests: list[RequestTiming], wall_s: float) -> dict[str, float]:
    """Figures of one timed repeat over all its requests; throughput is produced tokens / wall time."""
    tokens = sum(len(r.stamps) for r in requests)
    gaps = [g for r in requests for g in r.gaps_s]
    return {
        "tokens_per_s": tokens / wall_s,
        "ttft_ms": 1000 * statistics.mean(r.ttft_s for r in requests),
        "tpot_ms": 1000 * mean_defined([r.tpot_s for r in requests]),
        "itl_p50_ms": 1000 * percentile(gaps, 50),
        "itl_p95_ms": 1000 * percentile(gaps, 95),
        "itl_p99_ms": 1000 * percentile(gaps, 99),
        "e2e_ms": 1000 * statistics.mean(r.e2e_s for r in requests),
    }


def spread(values: list[float]) -> dict[str, float]:
    """n, median, min, max, IQR and coefficient of variation of repeated measurements."""
    vals = defined(values)
    if not vals:
        return {"n": 0, "median": float("nan"), "min": float("nan"), "max": float("nan"), "iqr": float("nan"),
                "cv": float("nan"), "values": []}
    mean = statistics.fmean(vals)
    cv = statistics.pstdev(vals) / mean if len(vals) > 1 and mean else 0.0
    return {"n": len(vals), "median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "iqr": percentile(vals, 75) - percentile(vals, 25), "cv": cv, "values": vals}


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM) in MiB, as the kernel keeps it."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # macOS and others: ru_maxrss (bytes on macOS, KiB on Linux)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if os.uname().sysname == "Darwin" else rss / 1024


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a clock read after it includes that work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cuda_memory(device: torch.device | str) -> dict[str, float]:
    """torch.cuda peaks since the last reset and NVML's device-wide used memory, in MiB (empty on CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    out = {"cuda_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
           "cuda_peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        except (AttributeError, TypeError, pynvml.NVMLError):
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        out["nvml_used_mb"] = info.used / 2**20
    except Exception as e:  # NVML missing or unsupported: the torch figures still stand
        out["nvml_error"] = str(e)[:80]
    return out


def reset_cuda_peaks(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
