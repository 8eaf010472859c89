"""`kvbench export --format vllm RUN_DIR`: one vLLM `bench serve`-shaped JSON per serving row, so their tooling
reads our results (bench/results/export_vllm.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.commands import UsageError

FORMATS = ("vllm",)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("export", help="write a run's serving rows in another tool's format")
    parser.add_argument("run_dir", type=Path, help="a run directory written by kvbench run (or its results.json)")
    parser.add_argument("--format", default="vllm", help=f"allowed: {', '.join(FORMATS)} (default: vllm)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the files (default: RUN_DIR/export-<format>)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bench.results.export_vllm import export_vllm

    if args.format not in FORMATS:
        raise UsageError(f"unknown --format {args.format!r}; allowed: {', '.join(FORMATS)}")
    base = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    paths = export_vllm(args.run_dir, args.out or base / f"export-{args.format}")
    if not paths:
        raise UsageError(f"{args.run_dir} has no ok rows of a request workload to export (vLLM's format is a "
                         "serving benchmark's)")
    for path in paths:
        print(path)
    return 0
