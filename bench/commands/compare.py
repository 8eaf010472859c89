"""`kvbench compare BASELINE CURRENT`: judge a run against a baseline (exit 0 pass, 1 regression, 2 bad input,
3 failed cells in CURRENT)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.commands import UsageError


def add_parser(subparsers: Any) -> None:
    comp = subparsers.add_parser("compare", help="judge CURRENT against BASELINE (exit 0 pass, 1 regression, "
                                 "2 bad input, 3 failed cells in CURRENT)")
    comp.add_argument("baseline", type=Path, help="run directory or results.json")
    comp.add_argument("current", type=Path, help="run directory or results.json")
    comp.add_argument("--quality-tol", type=float, default=0.01,
                      help="allowed quality loss: ppl ×(1+tol), Δppl 100·tol pp, KL tol nats, agreement tol "
                           "(default: 0.01)")
    comp.add_argument("--ratio-tol", type=float, default=0.10,
                      help="allowed drop of within-run ratios (default: 0.10, i.e. 10%%)")
    comp.add_argument("--p-threshold", type=float, default=0.002,
                      help="Mann-Whitney U significance for timings (default: 0.002)")
    comp.add_argument("--min-factor", type=float, default=1.1,
                      help="smallest timing change that counts (×) (default: 1.1)")
    comp.add_argument("--gate-absolute", action="store_true",
                      help="let timings and memory fail the comparison (default: off)")
    comp.add_argument("--strict", action="store_true",
                      help="'insufficient data' on a gating metric fails (default: off)")
    comp.add_argument("--markdown", type=Path, help="also write the comparison as Markdown to this file "
                      "(default: none)")
    comp.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bench.results.compare import Options, compare_paths
    from bench.results.compare_table import print_rich, to_markdown

    if args.quality_tol < 0 or not 0 <= args.ratio_tol < 1 or args.min_factor < 1 or not 0 < args.p_threshold < 1:
        raise UsageError("need --quality-tol >= 0, 0 <= --ratio-tol < 1, --min-factor >= 1, 0 < --p-threshold < 1")
    options = Options(quality_tol=args.quality_tol, ratio_tol=args.ratio_tol, p_threshold=args.p_threshold,
                      min_factor=args.min_factor, gate_absolute=args.gate_absolute, strict=args.strict)
    result = compare_paths(args.baseline, args.current, options)
    print_rich(result)
    if args.markdown:
        from bench.results.rows import atomic_write

        atomic_write(args.markdown, to_markdown(result))
    return result.exit_code()
