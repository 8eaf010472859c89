"""A cell's identity: model, workload, strategy, params and every run setting that changes what is measured.

One list (``SETTINGS``) serves the runner's ``--resume``, the results files' row keys and ``compare``'s notion of
comparable settings, so none of them can mix two cells that differ in any setting. A setting at its default is left
out of the key, so the key of a default cell is the ``model|workload|strategy|params`` it always was, and a results
file written before a setting existed (reports/baseline/results.json) keys its rows exactly as a new run of the same
settings does. Nothing here imports torch: compare and the results files use it.
"""

from __future__ import annotations

import math
from typing import Any

# name -> default. Order is the key's order; a new runtime axis is one more entry (default: its old behaviour).
SETTINGS: dict[str, Any] = {
    "dtype": "float32",
    "weights": "auto",  # "packed" before the default measured (rows record what ran, so old keys are unchanged)
    "weight_quant": "none",
    "attn": "sdpa",  # transformers' default for llama-family models and what the lean decode step always ran
    "compile": "none",
    "sampling": "",  # greedy
    "seed": 0,
    "request_rate": math.inf,
    "burstiness": 1.0,
    "max_concurrency": 0,  # 0: no limit
    "num_requests": 0,  # 0: all of the workload's requests
    "threads": 0,  # 0: torch's default
    "device": "cpu",
    "target": "",  # an endpoint measured instead of a strategy (openai:URL)
    "target_model": "",
}
# Settings of request workloads only: a prompt workload's cell never varies them (they are left at their defaults).
SERVING = ("request_rate", "burstiness", "max_concurrency", "num_requests")
# Rows record what actually ran under these names (a peer runs "stock" weights under --weights packed; num_requests is
# the count served; threads the count torch used; attn what transformers' forward ran), so a row written before rows
# carried ``cell_key`` cannot tell the requested value: the default (compare pairs such a row with a current cell that
# differs in threads only).
RECORDED_AS_RUN = ("weights", "num_requests", "max_concurrency", "threads", "attn")


def canonical(name: str, value: Any) -> str:
    """One spelling per value: 4 and 4.0 and "4" are the same rate; "greedy" is the default sampling."""
    default = SETTINGS[name]
    if value is None or value == "":
        value = default
    if name == "sampling" and value == "greedy":
        value = ""
    if isinstance(default, str):
        return str(value)
    try:
        return format(float(value), "g") if isinstance(default, float) else str(int(float(value)))
    except (TypeError, ValueError):  # not a number: kept as written, so it still differs from every number
        return str(value)


def cell_key(model: str, workload: str, strategy: str, params: str, settings: dict[str, Any]) -> str:
    """``model|workload|strategy|params`` then ``|name=value`` for each setting not at its default."""
    extra = [f"{k}={canonical(k, settings.get(k))}" for k in SETTINGS
             if canonical(k, settings.get(k)) != canonical(k, SETTINGS[k])]
    return "|".join([model, workload, strategy, params, *extra])


def row_key(row: dict[str, Any]) -> str:
    """A row's cell key: the ``cell_key`` the runner stamped on it, else (an older file) rebuilt from its columns,
    missing settings read as their defaults."""
    if row.get("cell_key"):
        return str(row["cell_key"])
    settings = {k: v for k, v in row.items() if k in SETTINGS and k not in RECORDED_AS_RUN}
    return cell_key(*(str(row.get(k, "")) for k in ("model", "workload", "strategy", "params")), settings)


def settings_of(row: dict[str, Any]) -> dict[str, str]:
    """The canonical settings a row's key stands for (for saying which setting two rows differ in)."""
    key = row_key(row)
    parts = dict(p.split("=", 1) for p in key.split("|")[4:] if "=" in p)
    return {k: parts.get(k, canonical(k, SETTINGS[k])) for k in SETTINGS}
