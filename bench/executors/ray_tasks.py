"""The Ray executor: every cell a Ray task declaring its resources, gathered into the driver's run directory.

A task runs the cell exactly as the local executor does (``run_in_process``: a fresh spawned process, its own process
group, killed at ``--cell-timeout``), so isolation, peak-RSS and failure rows are the same on a laptop and a cluster.
What Ray adds is placement: tasks run wherever their ``num_cpus``/``num_gpus``/``memory`` fit.

The reference cell (naive, or sequential for request workloads) of each model × workload runs before the cells that
compare with it: a dependency per group, not a global barrier. Its reference file travels through Ray's object
store: the reference task returns the file's bytes, and each dependent task writes them to its own node's
``<run>/.reference/`` before the cell starts, so no shared filesystem is needed.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a Ray worker imports this module before its first task: keep it free of torch
    from bench.cell import Cell

INSTALL = "pip install -e '.[ray]'"


def require_ray() -> None:
    """One clear line when Ray is missing (the CLI exits 2 with it)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise RuntimeError(f"--executor ray needs Ray, an optional dependency: {INSTALL}")


def _run_cell_task(cell_fields: dict[str, Any], timeout_s: float | None, reference: bytes | None,
                   submitted: float) -> dict[str, Any]:
    """What a Ray worker runs: place the reference file, run the cell in its own process, return the record (and,
    for a reference cell, the reference file it wrote)."""
    started = time.time()
    from bench.cell import Cell  # torch and transformers: imported once per worker, after the clock started
    from bench.executors.local import run_in_process

    cell = Cell(**cell_fields)
    path = cell.reference_path()
    if reference is not None and not cell.is_reference:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(reference)
        os.replace(tmp, path)
    record = run_in_process(cell, timeout_s)
    import ray

    record["row"].update(executor="ray", executor_overhead_s=max(0.0, started - submitted),
                         node=ray.util.get_node_ip_address())
    wrote = cell.is_reference and record["row"].get("status") == "ok" and path.exists()
    return {"record": record, "reference": path.read_bytes() if wrote else None}


class RayExecutor:
    """``address``: None starts a local Ray instance; 'auto' or 'ray://host:10001' joins a cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, cell_cpus: float = 1.0, cell_gpus: float = 0.0,
                 cell_memory_mb: int = 0):
        require_ray()
        self.address, self.cell_cpus, self.cell_gpus = address, cell_cpus, cell_gpus
        self.cell_memory_mb = cell_memory_mb

    def connect(self) -> int:
        """Start or join Ray; returns how many cells fit at once (so submit-to-start time is Ray's, not a queue's)."""
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"KVBENCH_CACHE": os.environ.get(
                         "KVBENCH_CACHE", str(Path.home() / ".cache" / "kvbench"))}})
        resources = ray.cluster_resources()
        fits = resources.get("CPU", 1) // self.cell_cpus if self.cell_cpus else len(resources)
        if self.cell_gpus:
            fits = min(fits, resources.get("GPU", 0) // self.cell_gpus)
        if fits < 1:
            raise RuntimeError(f"no Ray node has {self.cell_cpus} CPUs and {self.cell_gpus} GPUs free for a cell "
                               f"(cluster: {dict(resources)})")
        return int(fits)

    def run(self, cells: list[Cell], timeout_s: float | None,
            on_start: Callable[[Cell, str], None]) -> Iterator[tuple[Cell, dict[str, Any]]]:
        import ray

        capacity = self.connect()
        options: dict[str, Any] = {"num_cpus": self.cell_cpus, "num_gpus": self.cell_gpus, "max_retries": 0}
        if self.cell_memory_mb:
            options["memory"] = self.cell_memory_mb * 2**20
        task = ray.remote(_run_cell_task).options(**options)
        group = lambda c: (c.model, c.workload)  # noqa: E731
        needs_reference = {group(c) for c in cells if c.is_reference}
        ready = [c for c in cells if c.is_reference or group(c) not in needs_reference]
        blocked: dict[tuple[str, str], list[Cell]] = defaultdict(list)
        for c in cells:
            if not c.is_reference and group(c) in needs_reference:
                blocked[group(c)].append(c)
        blobs = {group(c): _local_reference(c) for c in ready if not c.is_reference}
        pending: dict[Any, Cell] = {}
        done = 0
        try:
            while ready or pending:
                while ready and len(pending) < capacity:
                    cell = ready.pop(0)
                    blob = blobs.get(group(cell))
                    pending[task.remote(asdict(cell), timeout_s, blob, time.time())] = cell
                on_start(cells[0], f"ray · running {len(pending)} · queued "
                                   f"{len(ready) + sum(map(len, blocked.values()))} · finished {done}")
                finished, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(finished[0])
                record = self._collect(finished[0], cell)
                if cell.is_reference:  # release the cells that compare with it, with its file
                    blob = record.pop("reference", None)
                    blobs[group(cell)] = ray.put(blob) if blob is not None else None
                    ready.extend(blocked.pop(group(cell), []))
                done += 1
                yield cell, record["record"]
        finally:
            for ref in pending:  # Ctrl-C or an error in the driver: stop what still runs
                ray.cancel(ref, force=True)

    @staticmethod
    def _collect(ref: Any, cell: Cell) -> dict[str, Any]:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:  # the worker died (SIGKILL, OOM) or the task was cancelled
            row = {**cell.base_row(), "status": "failed", "error": f"ray task failed — {_reason(e)}"[:300],
                   "executor": "ray"}
            return {"record": {"row": row, "spread": {}, "log": str(e)[-2000:]}, "reference": None}


def _reason(error: Exception) -> str:
    """The line that says what went wrong: Ray's messages start with a colored task header and a traceback."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("ray::", "File ", "^"))]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", line)]
    return f"{type(error).__name__}: {(errors or lines or ['no message'])[-1]}"


def _local_reference(cell: Cell) -> bytes | None:
    """A reference written by an earlier run of this directory (``--resume``), shipped to the nodes as is."""
    path = cell.reference_path()
    return path.read_bytes() if path.exists() else None
