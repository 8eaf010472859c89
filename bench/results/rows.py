"""Result rows and the files they live in: results.jsonl (appended per cell), results.csv/json (atomic).

The JSON files are strict JSON: a non-finite float (``--request-rate inf``, a nan figure) is written as the string
"inf", "-inf" or "nan", since the bare ``Infinity``/``NaN`` Python writes by default are rejected by JSON.parse
and jq. Reading turns those strings back into floats, and still accepts files written before (bare ``Infinity``,
no ``schema_version``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.env import kvbench_version
from bench.key import row_key as cell_row_key

# The columns every row carries, in order (issue #3); strategies may add more (blocks_used, ...), appended after.
COLUMNS = [
    "model", "workload", "strategy", "params", "lossless", "status", "error", "repeats", "tokens_per_s", "ttft_ms",
    "tpot_ms", "itl_p50_ms", "itl_p95_ms", "itl_p99_ms", "e2e_ms", "energy_j", "joules_per_token", "energy_source",
    "energy_note", "peak_rss_mb", "rss_over_model_mb", "cache_bytes",
    "cache_bytes_peak", "cache_bytes_per_token", "cache_bytes_theory", "compression_ratio", "speedup_vs_naive",
    "ppl", "ppl_delta_pct", "greedy_agreement", "first_divergence", "kl_vs_naive", "generated_tokens",
    "load_s", "sampling", "seed", "dtype", "device", "weights", "threads", "torch_version", "transformers_version",
    "kvbench_version", "python_version", "cpu", "cpu_capability", "git_rev",
]
# 1: bare Infinity/NaN, no version fields (read as such when schema_version is absent); 2: strict JSON.
SCHEMA_VERSION = 2
NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
# Text columns: their values are never read back as floats, even a model or strategy literally named "nan".
TEXT = {"model", "workload", "strategy", "params", "status", "error", "sampling", "dtype", "device", "weights",
        "decode_forward", "slo", "torch_version", "transformers_version", "kvbench_version", "python_version",
        "python", "cpu", "cpu_capability", "gpu", "git_rev", "platform", "run_id", "command", "energy_source",
        "energy_note", "nvml_error", "weight_quant", "target", "target_model", "failed_by_reason", "failure_example",
        "output_tokens_source", "cell_key", "prompt_format", "attn", "compile"}
TIMED = ["tokens_per_s", "ttft_ms", "tpot_ms", "itl_p50_ms", "itl_p95_ms", "itl_p99_ms", "e2e_ms"]


def num(v: Any) -> float | None:
    """A cell's value as a finite float, or None (missing, text, nan, inf): what tables and figures can use."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


class ResultsError(ValueError):
    pass


def row_key(row: dict[str, Any]) -> str:
    """The row's cell key, every run setting included (bench/key.py); older files key as they always did."""
    return cell_row_key(row)


def atomic_write(path: Path, text: str) -> None:
    """Write to a temp file beside ``path`` and rename over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Finished records, the last one per cell key; a torn last line (a kill mid-write) is dropped and named."""
    if not path.exists():
        return [], None
    records: dict[str, dict[str, Any]] = {}
    warning = None
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = decode(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                warning = f"{path}: line {n} was cut off mid-write and is ignored; its cell will run again"
                continue
            raise ResultsError(f"{path}: line {n} is not valid JSON; fix or delete that line and rerun") from None
        records[row_key(record["row"])] = record
    return list(records.values()), warning


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    return COLUMNS + extra


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns_of(rows), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"  # inf prints as "inf", the same word as in the JSON files
    return "" if v is None else v


def encode(v: Any) -> Any:
    """``v`` with every non-finite float, however deeply nested, as its string; numpy/torch scalars as numbers."""
    if isinstance(v, float):
        return v if math.isfinite(v) else "nan" if math.isnan(v) else "inf" if v > 0 else "-inf"
    if isinstance(v, (str, int, type(None))):  # bool is an int
        return v
    if isinstance(v, dict):
        return {k: encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [encode(x) for x in v]
    if hasattr(v, "item"):
        return encode(v.item())
    return str(v)


def dumps(v: Any, indent: int | None = None) -> str:
    """Strict JSON: allow_nan=False makes a non-finite float that slipped past ``encode`` an error, not Infinity."""
    return json.dumps(encode(v), indent=indent, allow_nan=False)


def decode(v: Any, key: str | None = None) -> Any:
    """The inverse of ``encode`` for what json.loads returns: "inf"/"-inf"/"nan" become floats again, except
    under a text column."""
    if isinstance(v, str):
        return NONFINITE.get(v, v) if key not in TEXT else v
    if isinstance(v, dict):
        return {k: decode(x, k) for k, x in v.items()}
    if isinstance(v, list):
        return [decode(x, key) for x in v]
    return v


def load_results(path: Path) -> dict[str, Any]:
    """results.json of a run directory (or the file itself); a clear error if missing or malformed."""
    file = path / "results.json" if path.is_dir() else path
    if not file.exists():
        raise ResultsError(f"{file} does not exist; pass a run directory written by `kvbench run` or its results.json")
    try:
        data = decode(json.loads(file.read_text()))  # json.loads still takes the bare Infinity of old files
    except json.JSONDecodeError as e:
        raise ResultsError(f"{file} is not valid JSON ({e.msg} at line {e.lineno}); it may be half-written — "
                           "rerun `kvbench report` on its directory to rebuild it from results.jsonl") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ResultsError(f"{file} has no 'rows' list; it was not written by kvbench")
    data.setdefault("schema_version", 1)
    return data


def write_run(out_dir: Path, records: list[dict[str, Any]], environment: dict[str, Any], meta: dict[str, Any]) -> None:
    """results.csv and results.json from the finished records (each {'row': ..., 'spread': ...})."""
    rows = [r["row"] for r in records]
    data = {"schema_version": SCHEMA_VERSION, "kvbench_version": kvbench_version(), "environment": environment,
            "meta": meta, "rows": rows,
            "spread": {row_key(r["row"]): r.get("spread", {}) for r in records},
            "samples": {row_key(r["row"]): r.get("samples", {}) for r in records}}
    atomic_write(out_dir / "results.json", dumps(data, indent=1))
    atomic_write(out_dir / "results.csv", to_csv(rows))
