"""The `kvbench` command line: run, list, report, compare, history."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  kvbench run                                    # default suite on the embedded SmolLM2-135M
  kvbench run --workload smoke --strategies full,hf-generate --repeats 1
  kvbench run --model random:smollm2-135m --workload chat-short --strategies full
  kvbench run --strategies full --param full.x=1,2   # one row per value of a parameter
  kvbench run --resume --out reports/my-run          # finish an interrupted run
  kvbench run --workload mixed-chat --strategies sequential,static-batch,continuous --request-rate 4 --repeats 1
  kvbench list                                   # strategies, parameters, workloads, models
  kvbench report reports/latest                  # re-render report.md from results.json
  kvbench compare reports/baseline reports/latest  # judge a run against the baseline (exit 1: regression)
  kvbench history --metric tokens_per_s          # plot reports/history.csv over git revisions (PNG)
"""
DEFAULT_STRATEGIES = "naive,full,hf-generate"
DEFAULT_WORKLOADS = "chat-short,long-context"
HISTORY = Path("reports") / "history.csv"


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvbench", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure strategies on a model and workloads", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--model", default="smollm2-135m",
                     help="smollm2-135m (embedded), random:<shape>, a local HF directory or a hub id; comma list")
    run.add_argument("--workload", default=DEFAULT_WORKLOADS, help=f"comma list (default {DEFAULT_WORKLOADS})")
    run.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                     help="comma list; 'decoder+cache' composes (e.g. speculative+quant-int8)")
    run.add_argument("--param", action="append", default=[], metavar="STRATEGY.KEY=V1[,V2]",
                     help="set or sweep a strategy parameter (one row per value); repeatable")
    run.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (median reported)")
    run.add_argument("--naive-repeats", type=int, default=1, help="timed repeats for naive (it is O(n²))")
    run.add_argument("--sampling", default="", metavar="temperature=0.7,top_p=0.9",
                     help="sampling options (default greedy): temperature, top_k, top_p, min_p, repetition_penalty")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    run.add_argument("--weights", default="packed", choices=("packed", "stock"),
                     help="packed: our strategies run fp32/bf16 CPU linears through oneDNN with weights reordered once "
                          "(transformers peers always run stock); stock: every strategy runs the model as loaded")
    run.add_argument("--threads", type=int, default=0, help="torch threads per cell (0: torch's default)")
    run.add_argument("--out", type=Path, help="run directory (default reports/<run-id>, linked as reports/latest)")
    run.add_argument("--resume", action="store_true", help="run only the cells of --out not yet ok")
    run.add_argument("--cell-timeout", type=float, default=None, help="seconds before a cell is killed")
    run.add_argument("--executor", default="local", metavar="local|ray[:ADDRESS]",
                     help="where cells run: spawned local processes, or Ray tasks (ADDRESS: auto, ray://HOST:PORT)")
    run.add_argument("--cell-cpus", type=float, default=1.0, help="Ray: CPUs each cell declares (default 1)")
    run.add_argument("--cell-gpus", type=float, default=0.0, help="Ray: GPUs each cell declares (default 0)")
    run.add_argument("--cell-memory-mb", type=int, default=0, help="Ray: memory each cell declares (0: none)")
    run.add_argument("--no-quality", action="store_true", help="skip perplexity/KL scoring")
    run.add_argument("--request-rate", type=float, default=float("inf"), metavar="R",
                     help="request workloads: arrivals per second (inf: all at t=0), gamma-distributed gaps")
    run.add_argument("--burstiness", type=float, default=1.0,
                     help="request workloads: gamma shape of the gaps (1.0 = Poisson; <1 burstier)")
    run.add_argument("--slo", default="", metavar="ttft_ms=2000,tpot_ms=150",
                     help="request workloads: latency targets for goodput (requests meeting both, per second)")
    run.add_argument("--num-requests", type=int, default=0, metavar="N",
                     help="request workloads: serve only the first N requests (0: all; a short run on a slow machine)")
    run.add_argument("--no-reference", action="store_true", help="do not add naive when it is not listed")
    run.add_argument("--history", type=Path, default=None,
                     help=f"append one summary row per cell to this CSV (default {HISTORY} when --out is under "
                          "reports/)")
    run.add_argument("--no-history", action="store_true", help="append nothing to the history CSV")
    sub.add_parser("list", help="strategies with their parameters, workloads and models")
    report = sub.add_parser("report", help="re-render report.md from a run directory")
    report.add_argument("run_dir", type=Path)
    comp = sub.add_parser("compare", help="judge CURRENT against BASELINE (exit 0 pass, 1 regression, "
                          "2 bad input, 3 failed cells in CURRENT)")
    comp.add_argument("baseline", type=Path, help="run directory or results.json")
    comp.add_argument("current", type=Path, help="run directory or results.json")
    comp.add_argument("--quality-tol", type=float, default=0.01,
                      help="allowed quality loss: ppl ×(1+tol), Δppl 100·tol pp, KL tol nats, agreement tol")
    comp.add_argument("--ratio-tol", type=float, default=0.10, help="allowed drop of within-run ratios (0.10: 10%%)")
    comp.add_argument("--p-threshold", type=float, default=0.002, help="Mann-Whitney U significance for timings")
    comp.add_argument("--min-factor", type=float, default=1.1, help="smallest timing change that counts (×)")
    comp.add_argument("--gate-absolute", action="store_true", help="let timings and memory fail the comparison")
    comp.add_argument("--strict", action="store_true", help="'insufficient data' on a gating metric fails")
    comp.add_argument("--markdown", type=Path, help="also write the comparison as Markdown to this file")
    hist = sub.add_parser("history", help=f"plot a metric over git revisions from {HISTORY}")
    hist.add_argument("--file", type=Path, default=HISTORY, help=f"history CSV (default {HISTORY})")
    hist.add_argument("--metric", default="tokens_per_s", help="a column of the history (default tokens_per_s)")
    hist.add_argument("--workload", help="only this workload")
    hist.add_argument("--out", type=Path, help="PNG to write (default reports/history-<metric>.png)")
    return parser.parse_args(argv)


def cmd_list() -> int:
    from bench.models import EMBEDDED, RANDOM_SHAPES
    from bench.workloads.catalog import all_workloads
    from strategies.registry import REGISTRY, parameters

    print("strategies (compose as decoder+cache; a bare cache runs under 'step', a bare decoder over 'full'),")
    print("each with its parameters as --param <strategy>.<key>=<default> (type): what it means")
    for name, cls in REGISTRY.items():
        flag = "lossless" if cls.lossless else "lossy"
        print(f"  {name:22s} {cls.kind:8s} {flag:8s} {cls.summary}")
        for p in parameters(name):
            print(f"      {name}.{p.name}={p.default} ({p.type}): {p.help}")
    print("workloads:")
    for w in all_workloads().values():
        print(f"  {w.name:22s} {w.description}")
    print(f"models: {EMBEDDED} (embedded, default), random:<{'|'.join(RANDOM_SHAPES)}>, a local HF dir, a hub id")
    return 0


def build_cells(args: argparse.Namespace):
    from bench.cell import Cell
    from bench.models import ModelNotFound, context_length, load_config, load_tokenizer, resolve
    from bench.runner import with_reference
    from bench.workloads.catalog import get_workload
    from strategies.core.sampling import Sampling
    from strategies.registry import expand, parse_params

    try:
        sweeps = parse_params(args.param)
        specs = [s.strip() for s in args.strategies.split(",") if s.strip()]
        if not specs:
            raise UsageError("--strategies is empty; `kvbench list` shows the allowed names")
        grid = [(spec, params) for spec in specs for params in expand(spec, sweeps)]
        workloads = [get_workload(w.strip()) for w in args.workload.split(",") if w.strip()]
        Sampling.parse(args.sampling)
        from bench.scenarios.requests import Slo
        from bench.workloads.requests import arrival_offsets
        arrival_offsets(1, args.request_rate, args.burstiness)
        Slo.parse(args.slo)
        if args.num_requests < 0:
            raise UsageError("--num-requests must be >= 0 (0: all requests)")
        from bench.models import DTYPES
        if args.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {args.dtype!r}; allowed: {', '.join(DTYPES)}")
        if args.repeats < 1 or args.naive_repeats < 1:
            raise UsageError("--repeats and --naive-repeats must be at least 1")
    except ValueError as e:
        raise UsageError(str(e)) from None
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    for model in models:
        try:
            config = load_config(model)
            tokenizer = load_tokenizer(resolve(model))
        except ModelNotFound as e:
            raise UsageError(str(e)) from None
        limit = context_length(config)
        for w in workloads:
            longest = max(len(p) for p in w.prompts(tokenizer))
            if longest + w.max_new_tokens > limit:
                raise UsageError(f"workload {w.name!r} needs {longest} prompt + {w.max_new_tokens} new tokens, "
                                 f"more than {model}'s context of {limit}; pick a shorter workload")
    cells = [Cell(model=m, workload=w.name, strategy=spec, params=params, repeats=args.repeats, seed=args.seed,
                  dtype=args.dtype, device=args.device, threads=args.threads, sampling=args.sampling,
                  quality=not args.no_quality, request_rate=args.request_rate, burstiness=args.burstiness,
                  slo=args.slo, num_requests=args.num_requests, weights=args.weights)
             for m in models for w in workloads for spec, params in grid]
    if not args.no_reference:
        cells = with_reference(cells)
    for c in cells:
        if c.is_reference:
            c.repeats = args.naive_repeats
    return cells


def prepare_out(args: argparse.Namespace) -> tuple[Path, str]:
    from bench.env import git_rev

    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + git_rev().split("-")[0]
    out = args.out or Path("reports") / run_id
    if args.resume and not (out / "results.jsonl").exists():
        raise UsageError(f"--resume needs an earlier run in {out}: no results.jsonl there")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to output directory {out}: {e.strerror}") from None
    return out, run_id


def cmd_run(args: argparse.Namespace) -> int:
    from bench.runner import run_grid

    # A kill (SIGTERM) unwinds like Ctrl-C, so the running cell's process group is killed and nothing is orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    from bench.executors import make_executor

    try:
        executor = make_executor(args.executor, args.cell_cpus, args.cell_gpus, args.cell_memory_mb)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    cells = build_cells(args)
    if executor.name == "ray" and not args.threads:  # a cell uses the CPUs it declared, never the whole node
        for cell in cells:
            cell.threads = max(1, int(args.cell_cpus))
    out, run_id = prepare_out(args)
    for cell in cells:
        cell.out_dir = str(out)
    meta = {"run_id": run_id, "command": "kvbench " + shlex.join(sys.argv[1:])}
    rows = run_grid(cells, out, meta, timeout_s=args.cell_timeout, resume=args.resume, executor=executor)
    if args.out is None:
        latest = Path("reports") / "latest"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    print(f"wrote {out}/results.csv, results.json, report.md")
    history = history_path(args, out)
    if history and rows:
        from bench.env import git_rev
        from bench.results.history import append_history

        append_history(history, rows, git_rev(), run_id)
        print(f"appended {len(rows)} rows to {history}")
    failed = [r for r in rows if r.get("status") == "failed"]
    return 1 if failed or not rows else 0


def history_path(args: argparse.Namespace, out: Path) -> Path | None:
    """Runs into reports/ (make benchmark, make regress) keep a history; runs elsewhere only when asked."""
    if args.no_history:
        return None
    if args.history:
        return args.history
    inside = Path("reports").resolve() in out.resolve().parents
    return HISTORY if inside else None


def cmd_history(args: argparse.Namespace) -> int:
    from bench.results.history import plot_history, read_history

    if args.out is not None and args.out.suffix.lower() != ".png":
        raise UsageError(f"--out {args.out} must be a .png file")
    out = args.out or Path("reports") / f"history-{args.metric}.png"
    rows = read_history(args.file)
    if rows and args.metric not in rows[0]:
        raise UsageError(f"unknown metric {args.metric!r}; the history has: {', '.join(list(rows[0])[7:])}")
    print(plot_history(rows, args.metric, out, args.workload))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
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

        write_run(run_dir, records, environment(), {"rebuilt_from": "results.jsonl"})
        path = write_report(run_dir)
    print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    from bench.results.rows import ResultsError

    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "report":
            return cmd_report(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "history":
            return cmd_history(args)
        return cmd_run(args)
    except (UsageError, ResultsError) as e:
        print(f"kvbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvbench: interrupted; finished cells are kept — rerun with --resume --out DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
