"""Where cells run: ``local`` (a spawned process per cell, one after another) or ``ray[:ADDRESS]`` (a Ray task per
cell with its resources, on a local Ray instance or a cluster)."""

from __future__ import annotations

from typing import Any


def make_executor(spec: str, cell_cpus: float = 1.0, cell_gpus: float = 0.0, cell_memory_mb: int = 0) -> Any:
    """'local', 'ray' (start a local Ray instance), 'ray:auto' or 'ray:ray://HOST:10001' (join a cluster)."""
    kind, _, address = spec.partition(":")
    if kind == "local" and not address:
        from bench.executors.local import LocalExecutor

        return LocalExecutor()
    if kind == "ray":
        if cell_cpus <= 0 or cell_gpus < 0 or cell_memory_mb < 0:
            raise ValueError(f"--cell-cpus must be > 0, --cell-gpus and --cell-memory-mb >= 0 (got {cell_cpus}, "
                             f"{cell_gpus}, {cell_memory_mb})")
        from bench.executors.ray_tasks import RayExecutor, require_ray

        require_ray()
        return RayExecutor(address or None, cell_cpus, cell_gpus, cell_memory_mb)
    raise ValueError(f"unknown executor {spec!r}; allowed: local, ray, ray:auto, ray:ray://HOST:PORT")
