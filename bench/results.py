"""Result rows and the files they live in: results.jsonl (appended per cell), results.csv/json (atomic)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

# The columns every row carries, in order (issue #3); strategies may add more (blocks_used, ...), appended after.
COLUMNS = [
    "model", "workload", "strategy", "params", "status", "error", "repeats", "tokens_per_s", "ttft_ms", "tpot_ms",
    "itl_p50_ms", "itl_p95_ms", "itl_p99_ms", "e2e_ms", "peak_rss_mb", "rss_over_model_mb", "cache_bytes",
    "cache_bytes_peak", "cache_bytes_per_token", "cache_bytes_theory", "compression_ratio", "speedup_vs_naive",
    "ppl", "ppl_delta_pct", "greedy_agreement", "first_divergence", "kl_vs_naive", "generated_tokens",
    "load_s", "sampling", "seed", "dtype", "device", "weights", "threads", "torch_version", "transformers_version",
    "git_rev",
]
TIMED = ["tokens_per_s", "ttft_ms", "tpot_ms", "itl_p50_ms", "itl_p95_ms", "itl_p99_ms", "e2e_ms"]


class ResultsError(ValueError):
    pass


def row_key(row: dict[str, Any]) -> str:
    return "|".join(str(row.get(k, "")) for k in ("model", "workload", "strategy", "params"))


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
        f.write(json.dumps(record, default=_plain) + "\n")
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
            record = json.loads(line)
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
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def load_results(path: Path) -> dict[str, Any]:
    """results.json of a run directory (or the file itself); a clear error if missing or malformed."""
    file = path / "results.json" if path.is_dir() else path
    if not file.exists():
        raise ResultsError(f"{file} does not exist; pass a run directory written by `kvbench run` or its results.json")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{file} is not valid JSON ({e.msg} at line {e.lineno}); it may be half-written — "
                           "rerun `kvbench report` on its directory to rebuild it from results.jsonl") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ResultsError(f"{file} has no 'rows' list; it was not written by kvbench")
    return data


def write_run(out_dir: Path, records: list[dict[str, Any]], environment: dict[str, Any], meta: dict[str, Any]) -> None:
    """results.csv and results.json from the finished records (each {'row': ..., 'spread': ...})."""
    rows = [r["row"] for r in records]
    data = {"environment": environment, "meta": meta, "rows": rows,
            "spread": {row_key(r["row"]): r.get("spread", {}) for r in records},
            "samples": {row_key(r["row"]): r.get("samples", {}) for r in records}}
    atomic_write(out_dir / "results.json", json.dumps(data, indent=1, default=_plain, allow_nan=True))
    atomic_write(out_dir / "results.csv", to_csv(rows))
