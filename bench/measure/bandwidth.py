"""The machine's memory read bandwidth, STREAM-style, once per run: the ceiling of batch-1 decode.

Batch-1 decode reads every weight once per token, so ``weight_bytes × tokens/s`` is the bandwidth a decode path
achieves, and its share of this probe (``roofline_pct``) says how close to the machine's limit it runs — the
figure gpt-fast prints beside tok/s. The probe sums a buffer far larger than any last-level cache with torch's
own reduction (vectorised, on every thread the cell may use), best of a few passes.
"""

from __future__ import annotations

import time

import torch

PROBE_MB = 512  # several times any server CPU's L3, so the passes stream from DRAM


def read_bandwidth_gbps(mb: int = PROBE_MB, passes: int = 5) -> float:
    """GB/s (10^9 bytes) read by ``torch.sum`` over an fp32 buffer of ``mb`` MiB, best of ``passes``."""
    buffer = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
    buffer.sum()  # first touch: page the buffer in, outside the timed passes
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * buffer.element_size() / best / 1e9


def roofline(weight_bytes: float, tpot_ms: float, read_gbps: float) -> dict[str, float]:
    """``achieved_gbps`` (weights read per second at the row's decode rate, 1000/tpot_ms tokens/s) and its share
    of the probe's bandwidth; nan where a figure is missing."""
    nan = float("nan")
    if not (weight_bytes > 0 and tpot_ms > 0):
        return {"achieved_gbps": nan, "roofline_pct": nan}
    achieved = weight_bytes * (1000.0 / tpot_ms) / 1e9
    return {"achieved_gbps": achieved, "roofline_pct": 100.0 * achieved / read_gbps if read_gbps > 0 else nan}
