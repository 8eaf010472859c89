"""The runner: expand model × workload × strategy into cells, run each in a fresh spawned process, keep rows.

Each finished cell is appended to results.jsonl at once, then results.csv/json and report.md are rewritten
atomically. ``resume`` skips cells already ``ok`` in results.jsonl, so nothing finished is lost or doubled.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench import env
from bench.cell import REFERENCE, Cell, reference_for
from bench.results.report import write_report
from bench.results.rows import append_jsonl, atomic_write, dumps, read_jsonl, row_key, write_run

console = Console(stderr=True)


def _cell_main(cell_fields: dict[str, Any], conn) -> None:
    """Child process entry: its own process group, so a timeout can kill everything it started."""
    os.setpgrp()
    from bench.cell import Cell, Unsupported, run_cell

    cell = Cell(**cell_fields)
    try:
        conn.send(("ok", run_cell(cell)))
    except Unsupported as e:
        conn.send(("skipped", str(e)))
    except Exception as e:
        conn.send(("failed", f"{type(e).__name__}: {e}".splitlines()[0][:300] + "\n" + traceback.format_exc()[-2000:]))
    finally:
        conn.close()


def run_in_process(cell: Cell, timeout_s: float | None) -> dict[str, Any]:
    """Run ``cell`` in a spawned process; a crash, a timeout or an error becomes a row with its status."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_cell_main, args=(asdict(cell), child), daemon=False)
    proc.start()
    child.close()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    message = None
    try:
        while message is None:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if parent.poll(wait):
                try:
                    message = parent.recv()
                except EOFError:
                    break
            elif not proc.is_alive():
                break
            elif deadline is not None and time.monotonic() >= deadline:
                _kill_group(proc.pid)
                message = ("failed", f"timed out after {timeout_s:g} s (--cell-timeout); its process group was killed")
    except BaseException:  # Ctrl-C: the cell sits in its own process group, so the terminal's SIGINT missed it
        _kill_group(proc.pid)
        raise
    proc.join(5)
    if proc.is_alive():
        _kill_group(proc.pid)
        proc.join()
    if message is None:
        message = ("failed", f"cell process died with exit code {proc.exitcode}")
    status, payload = message
    if status == "ok":
        return payload
    row = {**cell.base_row(), "status": status, "error": payload.splitlines()[0]}
    return {"row": row, "spread": {}, "log": payload}


def _kill_group(pid: int) -> None:
    """Kill the cell and everything it started; before the cell has made its own group, kill the process."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def order_cells(cells: list[Cell]) -> list[Cell]:
    """The reference (naive) of each model × workload runs first, so every later cell can compare with it."""
    return sorted(cells, key=lambda c: (c.model, c.workload, not c.is_reference))


def run_grid(cells: list[Cell], out_dir: Path, meta: dict[str, Any], timeout_s: float | None = None,
             resume: bool = False) -> list[dict[str, Any]]:
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
        for cell in todo:
            progress.update(task, description=f"{cell.workload} · {cell.strategy} {cell.key.split('|')[-1]}")
            record = run_in_process(cell, timeout_s)
            append_jsonl(jsonl, record)
            records[row_key(record["row"])] = record
            _finish_rows(list(records.values()))
            write_run(out_dir, list(records.values()), environment, meta)
            write_report(out_dir, plots=cell is todo[-1])  # figures once, when the last cell is in
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
