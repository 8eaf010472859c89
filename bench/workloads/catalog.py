"""Every workload by name: the single-prompt ones (prompts.py) and the request workloads (requests.py)."""

from __future__ import annotations

from bench.workloads.prompts import WORKLOADS, Workload
from bench.workloads.requests import REQUEST_WORKLOADS, RequestWorkload


def all_workloads() -> dict[str, Workload | RequestWorkload]:
    return {**WORKLOADS, **REQUEST_WORKLOADS}


def get_workload(name: str) -> Workload | RequestWorkload:
    known = all_workloads()
    if name not in known:
        raise ValueError(f"unknown workload {name!r}; allowed: {', '.join(known)}")
    return known[name]
