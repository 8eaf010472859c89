"""`kvbench report RUN_DIR`: re-render report.md from results.json (rebuilt from results.jsonl when torn)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.commands import UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("report", help="re-render report.md from a run directory")
    parser.add_argument("run_dir", type=Path, help="a run directory written by kvbench run")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bench.results.report import write_report
    from bench.results.rows import ResultsError, read_jsonl, write_run

    run_dir = args.run_dir
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a run directory")
    try:
        path = write_report(run_dir)
    except ResultsError as e:
        records, _ = read_jsonl(run_dir / "results.jsonl")
        if not records:
            raise UsageError(str(e)) from None
        from bench.env import environment
        from bench.runner import finish_rows

        finish_rows(records)  # results.jsonl holds each row as its cell wrote it: the cross-cell figures again
        write_run(run_dir, records, environment(), {"rebuilt_from": "results.jsonl"})
        path = write_report(run_dir)
    print(path)
    return 0
