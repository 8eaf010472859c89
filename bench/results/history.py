"""reports/history.csv: one summary row per cell of every run into reports/, and a plot of a metric over revisions."""

from __future__ import annotations

import csv
import math
import statistics
import time
from pathlib import Path
from typing import Any

from bench.results.rows import ResultsError

KEY = ["model", "workload", "strategy", "params"]
SUMMARY = ["status", "tokens_per_s", "speedup_vs_naive", "ttft_ms", "tpot_ms", "itl_p99_ms", "e2e_ms", "peak_rss_mb",
           "cache_bytes", "compression_ratio", "ppl", "ppl_delta_pct", "kl_vs_naive", "greedy_agreement", "repeats"]
COLUMNS = ["time_utc", "git_rev", "run_id", *KEY, *SUMMARY]


def append_history(path: Path, rows: list[dict[str, Any]], git_rev: str, run_id: str) -> int:
    """Append one row per cell; the header is written once. Returns the number of rows appended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow({**{k: _cell(r.get(k)) for k in KEY + SUMMARY}, "time_utc": stamp, "git_rev": git_rev,
                             "run_id": run_id})
    return len(rows)


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise ResultsError(f"{path} does not exist; `make regress` or `kvbench run` into reports/ appends to it")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"git_rev", "time_utc", *KEY} <= set(rows[0]):
        raise ResultsError(f"{path} is not a kvbench history file (no git_rev/time_utc/model... columns)")
    return rows


def plot_history(rows: list[dict[str, str]], metric: str, out: Path, workload: str | None = None) -> Path:
    """One line per cell: ``metric`` at each revision (in the order revisions were first seen), runs as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("status") == "ok" and _num(r.get(metric)) is not None
            and (workload is None or r["workload"] == workload)]
    if not rows:
        raise ResultsError(f"no ok rows with a value for {metric!r} in the history"
                           + (f" for workload {workload!r}" if workload else ""))
    revs = list(dict.fromkeys(r["git_rev"] for r in sorted(rows, key=lambda r: r["time_utc"])))
    cells: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        label = " · ".join(x for x in (r["model"], r["workload"], r["strategy"], r["params"]) if x)
        cells.setdefault(label, {}).setdefault(revs.index(r["git_rev"]), []).append(float(r[metric]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.6 * len(revs)), 4.5))
    for label, by_rev in sorted(cells.items()):
        xs = sorted(by_rev)
        line, = ax.plot(xs, [statistics.median(by_rev[x]) for x in xs], marker="o", label=label)
        for x in xs:
            ax.scatter([x] * len(by_rev[x]), by_rev[x], s=12, color=line.get_color(), alpha=0.4)
    ax.set_xticks(range(len(revs)), [rev[:12] for rev in revs], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("git revision (oldest first)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} over revisions (line: median of runs, dots: each run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f
