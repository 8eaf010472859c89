"""The runner: expand model × workload × strategy into cells, run each on an executor (bench/executors: a fresh
spawned process per cell here, or a Ray task per cell on a cluster), keep rows.

Each finished cell is appended to results.jsonl at once, then results.csv/json and report.md are rewritten
atomically. ``resume`` skips cells already ``ok`` in results.jsonl, so nothing finished is lost or doubled.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench import env
from bench.cell import REFERENCE, Cell, reference_for
from bench.executors.local import LocalExecutor
from bench.key import SERVING, SETTINGS, settings_of
from bench.measure.bandwidth import read_bandwidth_gbps, roofline
from bench.results.report import write_report
from bench.results.rows import append_jsonl, atomic_write, dumps, read_jsonl, row_key, write_run

console = Console(stderr=True)


def order_cells(cells: list[Cell]) -> list[Cell]:
    """The reference (naive) of each model × workload × settings runs first, so every later cell can compare with
    it; otherwise the grid's order (a sweep's values in the order given)."""
    first: dict[tuple, int] = {}
    for i, c in enumerate(cells):
        first.setdefault(c.reference_group, i)
    return sorted(cells, key=lambda c: (first[c.reference_group], not c.is_reference))


def stamp(cell: Cell, row: dict[str, Any]) -> None:
    """What the row's key stands for, as requested (the row's own columns say what ran: a peer's weights are stock)."""
    row["cell_key"] = cell.key


def run_grid(cells: list[Cell], out_dir: Path, meta: dict[str, Any], timeout_s: float | None = None,
             resume: bool = False, executor: Any = None) -> list[dict[str, Any]]:
    """Run ``cells`` on ``executor`` (default: local spawned processes) and keep every finished row."""
    executor = executor or LocalExecutor()
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "results.jsonl"
    done, warning = read_jsonl(jsonl) if resume else ([], None)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
        # Rewrite without the torn line, so the records appended next start on a line of their own.
        atomic_write(jsonl, "".join(dumps(r) + "\n" for r in done))
    if not resume and jsonl.exists():
        jsonl.unlink()
    records = {row_key(r["row"]): r for r in done}
    finished = {k for k, r in records.items() if r["row"].get("status") in ("ok", "skipped")}
    todo = [c for c in order_cells(cells) if c.key not in finished]
    environment = env.environment()
    # the machine's read bandwidth, once per run: each row's roofline_pct is its weight traffic's share of it
    environment["read_gbps"] = read_bandwidth_gbps()
    if resume and finished:
        console.print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already finished")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console)
    with progress:
        task = progress.add_task("cells", total=len(cells), completed=len(cells) - len(todo))
        def on_start(cell: Cell, description: str) -> None:
            progress.update(task, description=description)

        for count, (cell, record) in enumerate(executor.run(todo, timeout_s, on_start), 1):
            stamp(cell, record["row"])
            append_jsonl(jsonl, record)
            records[row_key(record["row"])] = record
            finish_rows(list(records.values()), environment["read_gbps"])
            write_run(out_dir, list(records.values()), environment, meta)
            write_report(out_dir, plots=count == len(todo))  # figures once, when the last cell is in
            row = record["row"]
            note = f"{row.get('tokens_per_s', float('nan')):.1f} tok/s" if row["status"] == "ok" else row["error"]
            progress.console.print(f"  {row['status']:7s} {cell.workload} {cell.strategy} "
                                   f"{row['params']}: {note}")
            progress.advance(task)
    # rows resumed from results.jsonl get their cross-cell figures too
    finish_rows(list(records.values()), environment["read_gbps"])
    return [r["row"] for r in records.values()]


def _group(row: dict[str, Any]) -> tuple:
    """Rows that share a naive for speedup: same model, workload and settings but the strategy's own."""
    settings = settings_of(row)
    return (row["model"], row["workload"], *(settings[k] for k in SETTINGS if k not in SERVING + AGAINST_FULL))


# Settings whose rows are measured against the full-precision, in-process naive (what they buy and cost).
AGAINST_FULL = ("weight_quant", "compile", "target", "target_model")


def finish_rows(records: list[dict[str, Any]], read_gbps: float = float("nan")) -> None:
    """Cross-cell figures: speedup over naive's tokens/s on the same model, workload and settings; the roofline
    (weight bytes read per decode step × decode tokens/s against the run's measured read bandwidth)."""
    rows = [r["row"] for r in records]
    for r in rows:
        if r.get("status") == "ok" and r.get("weight_bytes"):
            r.update(roofline(r["weight_bytes"], r.get("tpot_ms", float("nan")), read_gbps))
    naive = {_group(r): r.get("tokens_per_s") for r in rows if r["strategy"] == REFERENCE and r["status"] == "ok"}
    for r in rows:
        base = naive.get(_group(r))
        if r.get("status") == "ok" and base:
            r["speedup_vs_naive"] = r["tokens_per_s"] / base


def with_reference(cells: list[Cell]) -> list[Cell]:
    """Add a reference cell (naive; sequential on request workloads) for each model × workload × settings that lacks
    one: it is every quality column's reference, and a --dtype/--weights sweep has one per value."""
    have = {c.reference_group for c in cells if c.is_reference}
    extra = []
    for c in cells:
        if c.reference_group not in have:
            have.add(c.reference_group)
            # the reference runs in-process with full-precision weights: a weight-quantized or endpoint row's
            # quality columns show what the quantization or the server costs against it
            extra.append(replace(c, strategy=reference_for(c.workload), params={}, repeats=1, weight_quant="none",
                                 target="", target_model=""))
    return extra + cells
