"""RunSettings -> the cells to run: every value checked first (a bad one is one line naming the allowed values,
before any cell starts), then the cross product model × workload × dtype × weights × weight quant × attn × compile ×
rate × concurrency × strategy × params. Serving settings (rate, burstiness, concurrency, number of requests) vary
request workloads only: a prompt workload gets one cell, not one identical cell per rate.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

from bench.cell import Cell
from bench.config import ATTNS, COMPILE_MODES, DEVICE, WEIGHT_QUANTS, WEIGHTS, ConfigError, RunSettings
from bench.key import SETTINGS


def check_values(s: RunSettings) -> None:
    """Every setting that needs no model: raises ConfigError with one line."""
    from bench.models import DTYPES
    from bench.scenarios.requests import Slo
    from bench.workloads.requests import arrival_offsets
    from strategies.core.sampling import Sampling

    if not s.strategies:
        raise ConfigError("--strategies is empty; `kvbench list` shows the allowed names")
    if not s.model:
        raise ConfigError("--model is empty; e.g. smollm2-135m or random:tiny-llama")
    if not s.workloads:
        raise ConfigError("--workload is empty; `kvbench list` shows the allowed names")
    for dtype in s.dtype:
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    for weights in s.weights:
        if weights not in WEIGHTS:
            raise ConfigError(f"unknown --weights {weights!r}; allowed: {', '.join(WEIGHTS)}")
    for quant in s.weight_quant:
        if quant not in WEIGHT_QUANTS:
            raise ConfigError(f"unknown --weight-quant {quant!r}; allowed: {', '.join(WEIGHT_QUANTS)}")
    for attn in s.attn:
        if attn not in ATTNS:
            raise ConfigError(f"unknown --attn {attn!r}; allowed: {', '.join(ATTNS)}")
    for mode in s.compile:
        if mode not in COMPILE_MODES:
            raise ConfigError(f"unknown --compile {mode!r}; allowed: {', '.join(COMPILE_MODES)}")
    if s.target and not s.target.startswith("openai:"):
        raise ConfigError(f"unknown --target {s.target!r}; allowed: openai:http://HOST:PORT/v1")
    if not DEVICE.match(s.device):
        raise ConfigError(f"unknown --device {s.device!r}; allowed: cpu, cuda, cuda:N, mps")
    if s.repeats < 1 or s.naive_repeats < 1:
        raise ConfigError("--repeats and --naive-repeats must be at least 1")
    if s.num_requests < 0:
        raise ConfigError("--num-requests must be >= 0 (0: all requests)")
    if s.threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0: torch's default), got {s.threads}")
    if s.cell_timeout is not None and not s.cell_timeout > 0:
        raise ConfigError(f"--cell-timeout must be > 0 seconds, got {s.cell_timeout:g}")
    if any(c < 0 for c in s.max_concurrency):
        raise ConfigError(f"--max-concurrency must be >= 0 (0: no limit), got {min(s.max_concurrency)}")
    if s.slo and s.goodput:
        raise ConfigError("give --slo or --goodput, not both (they set the same targets)")
    try:
        Sampling.parse(s.sampling)
        for rate in s.request_rate:
            arrival_offsets(1, rate, s.burstiness)
        Slo.parse(s.slo_text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def strategy_grid(s: RunSettings) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    from strategies.registry import expand, parse_params

    try:
        sweeps = parse_params(s.param)
        return [(spec, params) for spec in s.strategies for params in expand(spec, sweeps)]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_models(s: RunSettings, workloads: list[Any]) -> None:
    """Each model exists and holds each workload's longest prompt plus its new tokens."""
    from bench.models import ModelNotFound, context_length, load_config, load_tokenizer, resolve

    for model in s.model:
        try:
            config = load_config(model)
            tokenizer = load_tokenizer(resolve(model))
        except ModelNotFound as e:
            raise ConfigError(str(e)) from None
        limit = context_length(config)
        for w in workloads:
            try:
                longest = max(len(p) for p in w.prompts(tokenizer))
            except ValueError as e:
                raise ConfigError(f"workload {w.name!r}: {e}") from None
            if longest + w.max_new_tokens > limit:
                raise ConfigError(f"workload {w.name!r} needs {longest} prompt + {w.max_new_tokens} new tokens, "
                                  f"more than {model}'s context of {limit}; pick a shorter workload")


def build_cells(s: RunSettings, check_context: bool = True) -> list[Cell]:
    """The grid, references added (unless --no-reference) and deduplicated; raises ConfigError before any cell."""
    from bench.runner import with_reference
    from bench.workloads.catalog import get_workload

    check_values(s)
    grid = [("endpoint", {})] if s.target else strategy_grid(s)
    try:
        workloads = [get_workload(w) for w in s.workloads]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if check_context:
        check_models(s, workloads)
    cells: dict[str, Cell] = {}
    for m, w, dtype, weights, quant, attn, mode, rate, conc in itertools.product(
            s.model, workloads, s.dtype, s.weights, s.weight_quant, s.attn, s.compile, s.request_rate,
            s.max_concurrency):
        serving = getattr(w, "is_request_workload", False)
        for spec, params in grid:
            cell = Cell(model=m, workload=w.name, strategy=spec, params=params, repeats=s.repeats, seed=s.seed,
                        dtype=dtype, device=s.device, threads=s.threads, sampling=s.sampling,
                        quality=not s.no_quality, slo=s.slo_text, weights=weights, weight_quant=quant,
                        attn=attn, compile=mode,
                        target=s.target, target_model=s.target_model,
                        request_rate=rate if serving else math.inf,
                        burstiness=s.burstiness if serving else SETTINGS["burstiness"],
                        num_requests=s.num_requests if serving else 0,
                        max_concurrency=conc if serving else 0)
            cells.setdefault(cell.key, cell)
    out = list(cells.values())
    if not s.no_reference:
        # the reference is never compiled: its groups are found among the cells as they would run uncompiled
        uncompiled = [u for u, c in zip([replace(c, compile="none") for c in out], out)
                      if c.compile == "none" or not u.is_reference]  # a compiled naive is a row (skipped), not one
        added = with_reference(uncompiled)
        out = [c for c in added[: len(added) - len(uncompiled)] if c.key not in cells] + out
    return [replace(c, repeats=s.naive_repeats) if c.is_reference else c for c in out]
