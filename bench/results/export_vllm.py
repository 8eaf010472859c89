"""A run's serving rows as vLLM `bench serve` result files (its ``--save-result`` JSON), so tools written for vLLM's
results (their plotting scripts, dashboards) read ours. One file per ok row of a request workload.

Field names and units are vLLM's (vllm/benchmarks/serve.py): ``median_ttft_ms``, ``p99_itl_ms``, ``output_throughput``
(tokens/s), ``request_goodput`` (requests/s meeting the SLO), ``e2el`` for end-to-end latency. What vLLM records and
a kvbench row does not (per-request arrays, std) is left out rather than made up; ``kvbench`` holds our own key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.results.rows import load_results

# vLLM's metric name -> our column, for each latency and its statistics
LATENCIES = {"ttft": "ttft", "tpot": "tpot", "itl": "itl", "e2el": "e2e"}
STATS = {"mean": "mean", "median": "p50", "p90": "p90", "p99": "p99"}


def _number(v: Any) -> float | int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) else v


def vllm_result(row: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
    """One row in vLLM's result shape (a non-finite rate is written as the string "inf", as vLLM does)."""
    rate = row.get("request_rate", math.inf)
    out: dict[str, Any] = {
        "backend": "kvbench", "model_id": row["model"], "tokenizer_id": row["model"],
        "num_prompts": row.get("num_requests"), "request_rate": "inf" if math.isinf(rate) else rate,
        "burstiness": row.get("burstiness", 1.0), "max_concurrency": row.get("max_concurrency") or None,
        "duration": row.get("duration_s"), "completed": row.get("num_requests"),
        "total_input_tokens": row.get("prompt_tokens"), "total_output_tokens": row.get("generated_tokens"),
        "request_throughput": row.get("request_throughput_rps"), "request_goodput": row.get("goodput_rps"),
        "output_throughput": row.get("output_tokens_per_s"), "total_token_throughput": row.get("total_tokens_per_s"),
    }
    for name, ours in LATENCIES.items():
        for stat, col in STATS.items():
            value = _number(row.get(f"{ours}_{col}_ms"))
            if value is not None:
                out[f"{stat}_{name}_ms"] = value
    out["kvbench"] = {k: row.get(k) for k in ("workload", "strategy", "params", "dtype", "weights", "slo",
                                              "slo_attainment", "cell_key", "git_rev")}
    out["kvbench"]["cpu"] = environment.get("cpu")
    return out


def _finite(v: Any) -> Any:
    """Strict JSON: a nan or infinite figure becomes null (the rate's "inf" is already a string)."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def export_vllm(run: Path, out_dir: Path) -> list[Path]:
    """Write one JSON per ok serving row of ``run`` into ``out_dir``; the paths written."""
    data = load_results(Path(run))
    rows = [r for r in data["rows"] if r.get("status") == "ok" and "request_throughput_rps" in r]
    paths = []
    for i, row in enumerate(rows):
        result = vllm_result(row, data.get("environment", {}))
        rate = result["request_rate"]
        name = f"{i:03d}-{row['strategy']}-{row['workload']}-{rate}qps"
        if result["max_concurrency"]:
            name += f"-concurrency{result['max_concurrency']}"
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in name)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{safe}.json"
        path.write_text(json.dumps(_finite(result), indent=1, allow_nan=False, default=str))
        paths.append(path)
    return paths
