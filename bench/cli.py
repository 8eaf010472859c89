"""The `kvbench` command line: run, list, report, compare, history, export (one module each in bench/commands/)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from bench.commands import UsageError
from bench.commands.run import EXAMPLES
from bench.config import DEFAULT_STRATEGIES, DEFAULT_WORKLOADS

# The subcommands, in help order: each bench/commands/<name>.py has add_parser(subparsers) and run(args) -> int.
COMMANDS = ["run", "list", "report", "compare", "history", "export", "serve", "train_heads"]
EPILOG = EXAMPLES + """\
  kvbench list --model random:tiny-llama --json   # which strategies support that model, for scripts
  kvbench report reports/latest                  # re-render report.md from results.json
  kvbench compare reports/baseline reports/latest  # judge a run against the baseline (exit 1: regression)
  kvbench export --format vllm reports/latest    # vLLM bench-serve JSON per serving row
  kvbench history --metric tokens_per_s          # plot reports/history.csv over git revisions (PNG)
"""
__all__ = ["COMMANDS", "DEFAULT_STRATEGIES", "DEFAULT_WORKLOADS", "UsageError", "main", "parse_args"]


def version() -> str:
    from bench.env import kvbench_version

    return kvbench_version()


class _Version(argparse.Action):
    """--version reads the installed version only when asked (importing bench.env costs nothing else)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"kvbench {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvbench", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, nargs=0, help="print kvbench's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"bench.commands.{name}").add_parser(sub)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    from bench.results.rows import ResultsError

    try:
        return args.handler(args)
    except (UsageError, ResultsError) as e:
        print(f"kvbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvbench: interrupted; finished cells are kept — rerun with --resume --out DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
