"""The prompt scenario: a decoder generates for a list of prompts, one after another, with a timestamp on every
emitted token; then an untimed probe reads the bytes the cache really holds. (Request workloads with arrivals are
bench/scenarios/requests.py.)"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedModel

from bench.measure.cache_bytes import CacheWatch
from bench.measure.energy import EnergyMeter, energy_columns
from bench.measure.timing import RequestTiming, cuda_memory, spread, summarize_repeat, synchronize
from bench.models import LoadedModel
from bench.results.rows import TIMED
from bench.scenarios.requests import check_served
from strategies.core.base import Generation, StrategyFailed, kv_shape
from strategies.core.sampling import Sampling
from strategies.registry import Composition


def clock(device: str) -> float:
    synchronize(device)
    return time.perf_counter()


def timed_run(comp: Composition, model: PreTrainedModel, prompts: list[list[int]], max_new: int,
              sampling: Sampling, device: str, meter: EnergyMeter | None = None
              ) -> tuple[Generation, dict[str, float], list[RequestTiming]]:
    """One timed pass over all prompts (a request starts when the previous one's last token was emitted, or at once
    when the decoder interleaves them). With a
    ``meter``, the figures add ``energy_j`` (joules of the pass) when its counter could be read."""
    stamps: dict[int, list[float]] = defaultdict(list)

    def emit(i: int, tokens) -> None:
        now = clock(device)
        stamps[i].extend([now] * len(tokens))

    start = clock(device)
    if meter is not None:  # inside the synchronized clock reads, so the counter spans exactly the timed GPU work
        meter.start()
    out = comp.decoder.generate(model, comp.cache_factory(model), prompts, max_new, sampling, emit)
    end = clock(device)
    joules = meter.stop() if meter is not None else None
    timings, begin = [], start
    # A decoder that serves the prompts one after another starts each when the previous one's last token is out;
    # one that batches them (continuous, static batching) interleaves their tokens: then all started at ``start``.
    interleaved = any(stamps[i] and stamps[i - 1] and stamps[i][0] < stamps[i - 1][-1] for i in range(1, len(prompts)))
    for i in range(len(prompts)):
        timings.append(RequestTiming(start if interleaved else begin, tuple(stamps[i])))
        begin = stamps[i][-1] if stamps[i] else begin
    figures = summarize_repeat(timings, end - start)
    if joules is not None:
        figures["energy_j"] = joules
    return out, figures, timings


def kv_bytes_closed_form(config: Any, tokens: int, dtype: torch.dtype) -> int:
    """2 · layers · kv_heads · head_dim · tokens · bytes — what a full cache of ``tokens`` holds."""
    layers, kv_heads, head_dim = kv_shape(config)
    return 2 * layers * kv_heads * head_dim * tokens * torch.empty((), dtype=dtype).element_size()


def probe_cache(comp: Composition, model: PreTrainedModel, prompts: list[list[int]], max_new: int,
                sampling: Sampling) -> dict[str, Any]:
    """Untimed pass over the longest prompt, reading the bytes the cache really holds after every emission."""
    if comp.cache is None:
        return {}  # peers drive transformers' own cache, which we do not see into
    if not comp.cache.holds_kv:
        return {"cache_bytes": 0, "cache_bytes_peak": 0, "cache_bytes_per_token": 0.0}
    watch = CacheWatch(comp.cache_factory(model), keep=True)
    longest = max(prompts, key=len)
    comp.decoder.generate(model, watch.new_cache, [longest], max_new, sampling, lambda i, tokens: watch.read())
    if not watch.caches:
        return {"cache_bytes": 0, "cache_bytes_peak": 0, "cache_bytes_per_token": 0.0}
    if why := watch.failure():
        raise StrategyFailed(why)
    end = watch.nbytes()
    seq = len(longest) + max_new - 1  # the last emitted token is never fed back
    theory = kv_bytes_closed_form(model.config, seq, model.dtype)
    row = {"cache_bytes": end, "cache_bytes_peak": max(watch.peak, end), "cache_bytes_per_token": end / seq,
           "cache_bytes_theory": theory, "compression_ratio": theory / end if end else float("inf")}
    last = watch.caches[-1]
    if hasattr(last, "stats"):
        row.update(last.stats())
    return row


def run_prompts(cell: Any, comp: Composition, loaded: LoadedModel, workload: Any, sampling: Sampling
                ) -> tuple[dict[str, Any], dict, dict, list[list[int]]]:
    """The timed part of a prompt-workload cell: (row figures, spreads, samples, tokens of the last repeat)."""
    model = loaded.model
    prompts = workload.prompts(loaded.tokenizer)
    if cell.is_reference and workload.reference_prompts:
        prompts = prompts[: workload.reference_prompts]
    max_new = workload.max_new_tokens
    # warm-up, untimed
    comp.decoder.generate(model, comp.cache_factory(model), prompts[:1], max_new, sampling, lambda i, t: None)
    repeats, samples = [], {"ttft_ms": [], "itl_ms": []}
    meter, tokens = EnergyMeter(cell.device), []
    for _ in range(cell.repeats):
        out, figures, timings = timed_run(comp, model, prompts, max_new, sampling, cell.device, meter)
        repeats.append(figures)
        tokens.append(sum(len(t.stamps) for t in timings))
        samples["ttft_ms"] += [1000 * t.ttft_s for t in timings]
        samples["itl_ms"] += [1000 * g for t in timings for g in t.gaps_s]
    check_served(out, dict.fromkeys(range(len(prompts)), max_new))
    spreads = {k: spread([r[k] for r in repeats]) for k in TIMED}
    row = {k: s["median"] for k, s in spreads.items()}
    energy, per_repeat = energy_columns(meter, [r.get("energy_j") for r in repeats], tokens)
    row.update(energy)
    spreads.update({k: spread(v) for k, v in per_repeat.items()})
    row["generated_tokens"] = sum(map(len, out.tokens))
    row.update(out.stats)  # of the last timed repeat
    row.update(cuda_memory(cell.device))
    row.update(probe_cache(comp, model, prompts, max_new, sampling))
    return row, spreads, samples, out.tokens
