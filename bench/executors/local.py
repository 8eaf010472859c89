"""The local executor: each cell in a freshly spawned process of its own, one after another.

The cell's process makes its own process group, so a timeout kills everything it started; a crash, a timeout or an
error becomes a row with its status. ``run_in_process`` is also what a Ray task runs on its node.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the cell's own process imports torch; the parent (or a Ray worker) need not
    from bench.cell import Cell

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a Ray worker killed mid-cell must not leave its cell
    running on the node). Elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _cell_main(cell_fields: dict[str, Any], conn) -> None:
    """Child process entry: its own process group, so a timeout can kill everything it started."""
    os.setpgrp()
    _die_with_parent()
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



class LocalExecutor:
    """Cells one at a time, in the order given (references first), each in its own spawned process."""

    name = "local"

    def run(self, cells: list[Cell], timeout_s: float | None,
            on_start: Callable[[Cell, str], None]) -> Iterator[tuple[Cell, dict[str, Any]]]:
        for cell in cells:
            on_start(cell, f"{cell.workload} · {cell.strategy} {cell.key.split('|')[-1]}")
            record = run_in_process(cell, timeout_s)
            record["row"]["executor"] = self.name
            yield cell, record
