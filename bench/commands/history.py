"""`kvbench history`: plot a metric of reports/history.csv over git revisions (PNG)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.commands import UsageError

HISTORY = Path("reports") / "history.csv"


def add_parser(subparsers: Any) -> None:
    hist = subparsers.add_parser("history", help=f"plot a metric over git revisions from {HISTORY}")
    hist.add_argument("--file", type=Path, default=HISTORY, help=f"history CSV (default: {HISTORY})")
    hist.add_argument("--metric", default="tokens_per_s", help="a column of the history (default: tokens_per_s)")
    hist.add_argument("--workload", help="only this workload (default: all)")
    hist.add_argument("--out", type=Path, help="PNG to write (default: reports/history-<metric>.png)")
    hist.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bench.results.history import plot_history, read_history

    if args.out is not None and args.out.suffix.lower() != ".png":
        raise UsageError(f"--out {args.out} must be a .png file")
    out = args.out or Path("reports") / f"history-{args.metric}.png"
    rows = read_history(args.file)
    if rows and args.metric not in rows[0]:
        raise UsageError(f"unknown metric {args.metric!r}; the history has: {', '.join(list(rows[0])[7:])}")
    print(plot_history(rows, args.metric, out, args.workload))
    return 0
