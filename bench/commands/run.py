"""`kvbench run`: measure strategies on models and workloads; every flag is a setting of bench/config.py (also a
TOML key for --config), every value checked before any cell starts."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.commands import UsageError
from bench.config import OPTIONS, Option, RunSettings, from_sources

HISTORY = Path("reports") / "history.csv"
EXAMPLES = """examples:
  kvbench run                                    # default suite on the embedded SmolLM2-135M
  kvbench run --workload smoke --strategies full,hf-generate --repeats 1
  kvbench run --model random:smollm2-135m --workload chat-short --strategies full
  kvbench run --workload smoke --strategies quant-int4 --param quant-int4.group_size=32,64  # a row per value
  kvbench run --workload smoke --strategies full --dtype float32,bfloat16 --weights packed,stock
  kvbench run --workload random:in=512,out=128,n=32 --strategies sequential,continuous --request-rate 1,2,4,inf
  kvbench run --workload mixed-chat --strategies continuous --max-concurrency 1,4,16 --goodput ttft:2000 tpot:150
  kvbench run --prompts my-requests.jsonl --strategies full,continuous
  kvbench run --config bench/examples/serving.toml --repeats 1   # a sweep written down; flags override it
  kvbench run --resume --out reports/my-run          # finish an interrupted run (or one whose settings grew)
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="measure strategies on a model and workloads", epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   description="Measure strategies on models and workloads: one row per cell.")
    for option in OPTIONS:
        add_option(parser, option)
    plain = parser.format_help
    # The allowed names need the registry (torch): computed only when help is asked for.
    parser.format_help = lambda: plain() + "\n" + allowed_names()  # type: ignore[method-assign]
    parser.set_defaults(handler=run)


def add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    flag = "--" + option.name.replace("_", "-")
    default = option.default
    shown = ",".join(format(v, "g") if isinstance(v, float) else str(v) for v in default) \
        if isinstance(default, list) else "none" if default is None else "off" if default is False else default
    text = f"{option.help} (default: {shown or 'empty'})"
    if option.kind == "bool":
        parser.add_argument(flag, action="store_true", default=None, help=text)
    elif option.kind == "items":
        parser.add_argument(flag, action="append", default=None, metavar=option.metavar, help=text)
    elif option.kind == "goodput":
        parser.add_argument(flag, nargs="+", default=None, metavar=option.metavar, help=text)
    else:
        parser.add_argument(flag, default=None, metavar=option.metavar or option.name.upper(), help=text)


def allowed_names() -> str:
    from bench.workloads.catalog import all_workloads
    from strategies.registry import REGISTRY

    workloads = ", ".join(all_workloads()) + ", random:in=N,out=N,n=N[,prefix=N], prompts:FILE.jsonl, " \
        "sharegpt:FILE.json[,n=N]"
    return f"allowed workloads: {workloads}\nallowed strategies: {', '.join(REGISTRY)}\n"


def settings_of(args: argparse.Namespace) -> RunSettings:
    return from_sources({o.name: getattr(args, o.name, None) for o in OPTIONS})


def prepare_out(s: RunSettings) -> tuple[Path, str]:
    from bench.env import git_rev

    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + git_rev().split("-")[0]
    out = s.out or Path("reports") / run_id
    if s.resume and not (out / "results.jsonl").exists():
        raise UsageError(f"--resume needs an earlier run in {out}: no results.jsonl there")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to output directory {out}: {e.strerror}") from None
    return out, run_id


def run(args: argparse.Namespace) -> int:
    # A kill (SIGTERM) unwinds like Ctrl-C, so the running cell's process group is killed and nothing is orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rows = execute(settings_of(args), "kvbench " + shlex.join(sys.argv[1:]))
    failed = [r for r in rows if r.get("status") == "failed"]
    return 1 if failed or not rows else 0


def execute(s: RunSettings, command: str) -> list[dict[str, Any]]:
    """Run the grid of ``s`` (the CLI and the Python API alike); returns the rows."""
    from bench.executors import make_executor
    from bench.grid import build_cells
    from bench.runner import run_grid

    try:
        executor = make_executor(s.executor, s.cell_cpus, s.cell_gpus, s.cell_memory_mb)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    cells = build_cells(s)
    if executor.name == "ray" and not s.threads:  # a cell uses the CPUs it declared, never the whole node
        for cell in cells:
            cell.threads = max(1, int(s.cell_cpus))
    out, run_id = prepare_out(s)
    for cell in cells:
        cell.out_dir = str(out)
    meta = {"run_id": run_id, "command": command}
    rows = run_grid(cells, out, meta, timeout_s=s.cell_timeout, resume=s.resume, executor=executor)
    if s.out is None:
        latest = Path("reports") / "latest"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    print(f"wrote {out}/results.csv, results.json, report.md")
    history = history_path(s, out)
    if history and rows:
        from bench.env import git_rev
        from bench.results.history import append_history

        append_history(history, rows, git_rev(), run_id)
        print(f"appended {len(rows)} rows to {history}")
    return rows


def history_path(s: RunSettings, out: Path) -> Path | None:
    """Runs into reports/ (make benchmark, make regress) keep a history; runs elsewhere only when asked."""
    if s.no_history:
        return None
    if s.history:
        return s.history
    inside = Path("reports").resolve() in out.resolve().parents
    return HISTORY if inside else None
