"""One module per `kvbench` subcommand, each with ``add_parser(subparsers) -> None`` and ``run(args) -> int``;
bench/cli.py lists them by name."""

from __future__ import annotations

from bench.config import ConfigError as UsageError  # bad input: one line, exit 2

__all__ = ["UsageError"]
