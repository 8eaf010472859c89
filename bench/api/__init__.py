"""The Python API, importable as ``kvbench`` (pyproject maps the name onto this package): the CLI's run as a
function returning a pandas DataFrame, and a finished run read back.

    import kvbench
    rows = kvbench.run(model="random:tiny-llama", workload="random:in=16,out=4,n=4", strategies="sequential",
                       request_rate=[4, "inf"], repeats=1, out="/tmp/kvbench-demo")
    rows[["strategy", "request_rate", "ttft_p50_ms", "output_tokens_per_s"]]
    same = kvbench.load("/tmp/kvbench-demo")

Keyword arguments are the `kvbench run` flags with underscores (bench/config.py OPTIONS); list settings take a Python
list or a comma string. Cells still run in their own processes, through the same runner as the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["load", "run", "settings", "version"]


def settings(**options: Any):
    """The RunSettings these options make (defaults filled, ``config=FILE.toml`` read, values converted)."""
    from bench.config import from_sources

    return from_sources(options)


def run(**options: Any) -> pd.DataFrame:
    """Run the grid the options describe (as `kvbench run` would) and return one row per cell. Bad input raises
    ValueError (bench.config.ConfigError) before any cell starts. ``out`` defaults to a new reports/<run-id>."""
    from bench.commands.run import execute

    s = settings(**options)
    if s.history is None:
        s.no_history = True  # a notebook's runs stay out of reports/history.csv unless it names one
    args = ", ".join(f"{k}={v!r}" for k, v in options.items())
    rows = execute(s, f"kvbench.run({args})")
    return frame(rows)


def load(run_dir: str | Path) -> pd.DataFrame:
    """The rows of a finished run (its directory or its results.json) as a DataFrame."""
    from bench.results.rows import load_results

    return frame(load_results(Path(run_dir))["rows"])


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows in the results files' column order (COLUMNS first, then the rest as they come)."""
    from bench.results.rows import columns_of

    return pd.DataFrame(rows, columns=columns_of(rows) if rows else None)


def version() -> str:
    from bench.env import kvbench_version

    return kvbench_version()
