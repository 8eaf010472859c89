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
from bench.results.report import write_report
from bench.results.rows import append_jsonl, atomic_write, dumps, read_jsonl, row_key, write_run

console = Console(stderr=True)


def order_cells(cells: list[Cell]) -> list[Cell]:
    """The reference (naive) of each model × workload runs first, so every later cell can compare with it."""
    return sorted(cells, key=lambda c: (c.model, c.workload, not c.is_reference))


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
    if resume and finished:
        console.print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already finished")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console)
    with progress:
        task = progress.add_task("cells", total=len(cells), completed=len(cells) - len(todo))
        def on_start(cell: Cell, description: str) -> None:
            progress.update(task, description=description)

        for count, (cell, record) in enumerate(executor.run(todo, timeout_s, on_start), 1):
            append_jsonl(jsonl, record)
            records[row_key(record["row"])] = record
            _finish_rows(list(records.values()))
            write_run(out_dir, list(records.values()), environment, meta)
            write_report(out_dir, plots=count == len(todo))  # figures once, when the last cell is in
            row = record["row"]
            note = f"{row.get('tokens_per_s', float('nan')):.1f} tok/s" if row["status"] == "ok" else row["error"]
            progress.console.print(f"  {row['status']:7s} {cell.workload} {cell.strategy} "
                                   f"{row['params']}: {note}")
            progress.advance(task)
    return [r["row"] for r in records.values()]


def _finish_rows(records: list[dict[str, Any]]) -> None:
    """Cross-cell figures: speedup over naive's tokens/s on the same model and workload."""
    rows = [r["row"] for r in records]
    naive = {(r["model"], r["workload"]): r.get("tokens_per_s") for r in rows
             if r["strategy"] == REFERENCE and r["status"] == "ok"}
    for r in rows:
        base = naive.get((r["model"], r["workload"]))
        if r.get("status") == "ok" and base:
            r["speedup_vs_naive"] = r["tokens_per_s"] / base


def with_reference(cells: list[Cell]) -> list[Cell]:
    """Add a naive cell for each model × workload that lacks one (it is every quality column's reference)."""
    have = {(c.model, c.workload) for c in cells if c.is_reference}
    extra = []
    for c in cells:
        if (c.model, c.workload) not in have:
            have.add((c.model, c.workload))
            extra.append(replace(c, strategy=reference_for(c.workload), params={}, repeats=1))
    return extra + cells
