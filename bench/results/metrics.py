"""What every result column is: its kind (how `compare` judges it), its direction and its unit.

Kinds:
- ``exact``    figures that must not move at all (bytes, token counts, a lossless strategy's agreement, status);
- ``quality``  quality lost vs naive; judged against ``--quality-tol`` in the metric's own scale;
- ``ratio``    within-run ratios (speedup vs naive, vs a peer); judged against ``--ratio-tol``;
- ``absolute`` wall-clock figures and memory: noisy on shared machines, judged by a Mann-Whitney U test;
- ``info``     shown, never judged (unknown columns land here, so a new column never breaks `compare`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXACT, QUALITY, RATIO, ABSOLUTE, INFO = "exact", "quality", "ratio", "absolute", "info"
UP, DOWN = "up", "down"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    direction: str | None  # UP: higher is better; DOWN: lower is better; None: no better side (status)
    unit: str
    relative_tol: bool = False  # quality only: the tolerance is a fraction of the baseline value, not a difference
    tol_scale: float = 1.0  # quality only: --quality-tol × this is the allowed change in the metric's unit


# Columns that say what a cell *is* or how it ran, not what it measured.
CONFIG = {"model", "workload", "strategy", "params", "lossless", "error", "repeats", "sampling", "seed", "dtype",
          "device", "threads", "torch_version", "transformers_version", "kvbench_version", "python_version", "cpu",
          "cpu_capability", "git_rev", "request_rate", "nvml_error", "energy_source", "energy_note"}
# A cell measured under different settings than its baseline: its timings are not comparable.
CELL_SETTINGS = ("sampling", "seed", "dtype", "device", "threads")

DECLARED = {m.name: m for m in (
    Metric("status", EXACT, None, ""),
    Metric("tokens_per_s", ABSOLUTE, UP, "tok/s"),
    Metric("load_s", ABSOLUTE, DOWN, "s"),
    # device-wide counters (NVML, RAPL) around each timed repeat: noisy like wall time, judged like it
    Metric("energy_j", ABSOLUTE, DOWN, "J"),
    Metric("joules_per_token", ABSOLUTE, DOWN, "J/token"),
    Metric("cache_bytes", EXACT, DOWN, "B"),
    Metric("cache_bytes_peak", EXACT, DOWN, "B"),
    Metric("cache_bytes_per_token", EXACT, DOWN, "B/token"),
    Metric("cache_bytes_theory", EXACT, DOWN, "B"),
    Metric("compression_ratio", EXACT, UP, "×"),
    Metric("generated_tokens", EXACT, UP, "tokens"),
    Metric("speedup_vs_naive", RATIO, UP, "×"),
    Metric("ppl", QUALITY, DOWN, "ppl", relative_tol=True),
    Metric("ppl_delta_pct", QUALITY, DOWN, "pp", tol_scale=100.0),
    Metric("kl_vs_naive", QUALITY, DOWN, "nats"),
    Metric("greedy_agreement", QUALITY, UP, "fraction"),
    Metric("first_divergence", INFO, UP, "tokens"),
)}
# A lossless strategy must reproduce naive's tokens: any change in these is a regression, not a tolerance.
LOSSLESS_EXACT = {"greedy_agreement", "first_divergence"}

# Columns added later by other strategies or workloads (ttft_p99_ms, blocks_used, speedup_vs_hf...): by suffix.
PATTERNS = [
    (re.compile(r"^speedup_vs_|_vs_peer$"), RATIO, UP, "×"),
    (re.compile(r"_bytes(_|$)"), EXACT, DOWN, "B"),
    (re.compile(r"_ms$"), ABSOLUTE, DOWN, "ms"),
    (re.compile(r"_mb$"), ABSOLUTE, DOWN, "MiB"),
    (re.compile(r"_per_s$"), ABSOLUTE, UP, "/s"),
]


def metric(name: str, lossless: bool | None = None) -> Metric:
    """The declaration of column ``name``; ``lossless`` makes agreement columns exact."""
    if lossless and name in LOSSLESS_EXACT:
        return Metric(name, EXACT, UP, DECLARED[name].unit)
    if name in DECLARED:
        return DECLARED[name]
    for pattern, kind, direction, unit in PATTERNS:
        if pattern.search(name):
            return Metric(name, kind, direction, unit)
    return Metric(name, INFO, None, "")


def better_ratio(m: Metric, baseline: float, current: float) -> float:
    """current vs baseline as a factor where > 1 is always better (nan when undefined)."""
    if m.direction is None or baseline in (0, None) or current in (0, None):
        return float("nan")
    return current / baseline if m.direction == UP else baseline / current
