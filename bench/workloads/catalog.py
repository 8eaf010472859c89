"""Every workload by name: the single-prompt ones (prompts.py) and the request workloads (requests.py)."""

from __future__ import annotations

from bench.workloads.prompts import WORKLOADS, Workload
from bench.workloads.requests import REQUEST_WORKLOADS, RequestWorkload
from bench.workloads.retrieval import RETRIEVAL_WORKLOADS, RetrievalWorkload
from bench.workloads.specs import is_spec, spec_workload


def all_workloads() -> dict[str, Workload | RequestWorkload | RetrievalWorkload]:
    return {**WORKLOADS, **REQUEST_WORKLOADS, **RETRIEVAL_WORKLOADS}


def get_workload(name: str) -> Workload | RequestWorkload:
    if is_spec(name):  # random:in=..,out=..,n=.., prompts:FILE.jsonl, sharegpt:FILE.json (bench/workloads/specs.py)
        return spec_workload(name)
    known = all_workloads()
    if name not in known:
        raise ValueError(f"unknown workload {name!r}; allowed: {', '.join(known)}, "
                         "random:in=N,out=N,n=N[,prefix=N], prompts:FILE.jsonl, sharegpt:FILE.json[,n=N]")
    return known[name]
