"""`kvbench list`: strategies with their parameters, workloads and models; ``--model M``: which strategies support
that model (from their supports()); ``--json`` for scripts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.commands import UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("list", help="strategies with their parameters, workloads and models")
    parser.add_argument("--model", default=None, help="say which strategies support this model, and why not "
                        "(default: none; list everything)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text (default: text)")
    parser.set_defaults(handler=run)


def support(model_spec: str) -> dict[str, str | None]:
    """Strategy name -> None when it runs on ``model_spec``, else the reason (the model is built on the meta device:
    its config only, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.models import ModelNotFound, load_config
    from strategies.registry import REGISTRY, compose

    try:
        config = load_config(model_spec)
    except ModelNotFound as e:
        raise UsageError(str(e)) from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    out: dict[str, str | None] = {}
    for name in REGISTRY:
        try:
            comp = compose(name, {})
            out[name] = comp.cache.supports(model) if comp.cache is not None else None
        except Exception as e:  # a strategy that cannot even be built for this model says why
            out[name] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return out


def catalog(model_spec: str | None) -> dict[str, Any]:
    from bench.models import EMBEDDED, RANDOM_SHAPES
    from bench.workloads.catalog import all_workloads
    from strategies.registry import REGISTRY, parameters

    supported = support(model_spec) if model_spec else {}
    strategies = []
    for name, cls in REGISTRY.items():
        entry = {"name": name, "kind": cls.kind, "lossless": cls.lossless, "summary": cls.summary,
                 "parameters": [{"name": p.name, "default": p.default, "type": p.type, "help": p.help}
                                for p in parameters(name)]}
        if model_spec:
            entry["supports_model"] = supported[name] is None
            entry["unsupported_reason"] = supported[name]
        strategies.append(entry)
    return {"strategies": strategies,
            "workloads": [{"name": w.name, "description": w.description} for w in all_workloads().values()],
            "workload_specs": ["random:in=N,out=N,n=N[,prefix=N]", "prompts:FILE.jsonl", "sharegpt:FILE.json[,n=N]"],
            "models": {"embedded": EMBEDDED, "random": [f"random:{s}" for s in RANDOM_SHAPES]},
            **({"model": model_spec} if model_spec else {})}


def run(args: argparse.Namespace) -> int:
    data = catalog(args.model)
    if args.json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    if args.model:
        print(f"strategies on {args.model}:")
        for s in data["strategies"]:
            print(f"  {s['name']:22s} {'yes' if s['supports_model'] else 'no: ' + s['unsupported_reason']}")
        return 0
    print("strategies (compose as decoder+cache; a bare cache runs under 'step', a bare decoder over 'full'),")
    print("each with its parameters as --param <strategy>.<key>=<default> (type): what it means")
    for s in data["strategies"]:
        flag = "lossless" if s["lossless"] else "lossy"
        print(f"  {s['name']:22s} {s['kind']:8s} {flag:8s} {s['summary']}")
        for p in s["parameters"]:
            print(f"      {s['name']}.{p['name']}={p['default']} ({p['type']}): {p['help']}")
    print("workloads:")
    for w in data["workloads"]:
        print(f"  {w['name']:22s} {w['description']}")
    print("  " + ", ".join(data["workload_specs"]) + ": shaped or your own (see kvbench run --help)")
    shapes = "|".join(m.removeprefix("random:") for m in data["models"]["random"])
    print(f"models: {data['models']['embedded']} (embedded, default), random:<{shapes}>, a local HF dir, a hub id")
    return 0
