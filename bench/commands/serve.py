"""`kvbench serve`: an OpenAI-compatible server over the continuous-batching engine (bench/serving/).

Binds 127.0.0.1 unless ``--host`` says otherwise. Ctrl-C or SIGTERM stops accepting, finishes the open requests
and exits 0. Bad options exit 2 with one line naming what is wrong and what is allowed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_MODEL = "smollm2-135m"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="an OpenAI-compatible server (completions, chat, SSE) over the engine",
                              description="Serve MODEL over /v1/completions, /v1/chat/completions, /v1/models, "
                                          "/health and /metrics with the continuous-batching engine.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model to serve (default {DEFAULT_MODEL})")
    p.add_argument("--strategies", default="continuous",
                   help="continuous or continuous+prefix-cache (default continuous)")
    p.add_argument("--param", action="append", default=[], metavar="STRATEGY.KEY=V",
                   help="a strategy parameter, one value (e.g. continuous.max_batch=32); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--served-model-name", default=None, help="the name clients pass as 'model' (default --model)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed for random:<shape> models")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--weights", default="auto", choices=("auto", "packed", "stock"),
                   help="auto (default): the faster of stock and oneDNN-packed linears on this CPU, timed at start, as "
                        "benchmark cells choose; packed: oneDNN-packed; stock: as loaded")
    p.add_argument("--response-cache", type=int, default=0, metavar="N",
                   help="answer identical greedy requests from a cache of N responses (default 0: off)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--max-prompt-tokens", type=int, default=0, help="longest prompt (default 0: the context)")
    p.add_argument("--max-tokens", type=int, default=4096, help="most new tokens one request may ask for")
    p.add_argument("--drain-timeout", type=float, default=None, metavar="S",
                   help="on SIGTERM, wait at most S seconds for open requests (default: until they finish)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bench.serving.app import create_app
    from bench.serving.server import build_engine, run_server
    from bench.serving.service import Limits
    from strategies.registry import StrategyError, parse_params

    def fail(message: str) -> int:
        print(f"kvbench serve: {message}", file=sys.stderr)
        return 2

    if not 0 <= args.port < 65536:
        return fail(f"--port must be in 0..65535, got {args.port}")
    if args.response_cache < 0:
        return fail(f"--response-cache must be >= 0 entries (0 = off), got {args.response_cache}")
    try:
        sweeps = parse_params(args.param)
    except StrategyError as e:
        return fail(str(e))
    many = [f"{n}.{k}" for n, kv in sweeps.items() for k, vs in kv.items() if len(vs) != 1]
    if many:
        return fail(f"--param {many[0]}: a server takes one value per parameter, not a sweep")
    params = {n: {k: vs[0] for k, vs in kv.items()} for n, kv in sweeps.items()}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        served = build_engine(args.model, args.strategies, params, args.dtype, args.device, args.seed, args.weights)
        limits = Limits(args.max_body_bytes, args.max_prompt_tokens, args.max_tokens, served.loaded.max_context)
    except (ValueError, StrategyError) as e:
        return fail(str(e))
    name = args.served_model_name or args.model
    app = create_app(served.engine, served.loaded.tokenizer, name, limits, args.response_cache)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"kvbench serve: listening on {args.host}: anyone who can reach this address can use the model",
              file=sys.stderr)
    stats = served.engine.stats()
    print(f"kvbench serve: {name} ({args.strategies}, {int(stats['blocks_total'])} KV blocks, weights "
          f"{'packed' if served.packed else 'stock'}) on http://{args.host}:{args.port}/v1 — Ctrl-C or SIGTERM "
          "drains and exits", flush=True)
    try:
        return run_server(app, args.host, args.port, args.drain_timeout)
    except OSError as e:
        print(f"kvbench serve: {e}", file=sys.stderr)
        return 1
