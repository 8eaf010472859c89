"""What reproduces a row, and what explains a difference between two runs: versions, git revision, CPU (model,
ISA level, the cores this process may use), memory, GPU, threads.

torch and transformers are imported inside the functions that need them, so that reading and comparing results
files (bench/results/rows.py, bench/results/compare.py) does not pay for importing them.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Thread-count variables that change how fast the same code runs; recorded when set.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


@functools.cache
def kvbench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kvbench")
    except PackageNotFoundError:  # a checkout run without `pip install -e .`
        return "unknown"


@functools.cache
def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The ISA level torch's kernels dispatch to (AVX2, AVX512, ...): the same CPU model can differ here
    (ATEN_CPU_CAPABILITY, a VM hiding AVX-512), and so can the speed of the same code."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def python_version() -> str:
    return platform.python_version()


def affinity_cores() -> int:
    """Cores this process may run on (a container or taskset can allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 0


def environment() -> dict[str, Any]:
    import psutil
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "kvbench_version": kvbench_version(),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cores": os.cpu_count() or 0,
        "affinity_cores": affinity_cores(),
        "physical_cores": psutil.cpu_count(logical=False) or 0,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "python": python_version(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},
        "git_rev": git_rev(),
        "platform": platform.platform(),
    }
