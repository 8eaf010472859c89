"""The serving path of a cell: a request workload with arrivals, measured as vLLM's bench serve measures a server.

Every latency is relative to the request's ARRIVAL (not to when a strategy started it): TTFT = arrival → first
token, E2E = arrival → last token, TPOT = (E2E − TTFT)/(n − 1), ITL = gaps between a request's tokens. Throughput
divides produced tokens by the wall time from the first arrival to the last token. Goodput counts the requests
meeting both SLO targets, per second. The runner owns the clock: a scheduler gets a ``RunClock`` it may read only
to decide which requests have arrived (strategies/core/requests.py); emitted tokens are timestamped here.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel

from bench.measure.cache_bytes import CacheWatch
from bench.measure.energy import EnergyMeter, energy_columns
from bench.measure.timing import RequestTiming, cuda_memory, defined, percentile, spread, synchronize
from bench.models import LoadedModel
from bench.results.rows import TIMED
from bench.scenarios.concurrency import ConcurrencyGate
from strategies.core.base import RequestEngine, StrategyFailed
from strategies.core.requests import Generation, Request
from strategies.core.sampling import Sampling
from strategies.registry import Composition

DEFAULT_SLO = "ttft_ms=2000,tpot_ms=150"  # a CPU-sized interactive target; override with --slo
PROBE_REQUESTS = 4  # requests in the untimed warm-up pass that also reads the cache's real bytes


@dataclass(frozen=True)
class Slo:
    ttft_ms: float
    tpot_ms: float
    e2el_ms: float = math.inf  # end-to-end latency target (vLLM's --goodput e2el:MS)

    @classmethod
    def parse(cls, text: str) -> Slo:
        values = {"ttft_ms": math.inf, "tpot_ms": math.inf, "e2el_ms": math.inf}
        for item in filter(None, (s.strip() for s in (text or DEFAULT_SLO).split(","))):
            key, _, value = item.partition("=")
            if key not in values:
                raise ValueError(f"unknown --slo target {key!r}; allowed: ttft_ms, tpot_ms, e2el_ms "
                                 "(e.g. ttft_ms=500,tpot_ms=50)")
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"--slo {key}={value!r} is not a number of milliseconds") from None
        return cls(**values)

    def __str__(self) -> str:
        e2el = f",e2el_ms={self.e2el_ms:g}" if math.isfinite(self.e2el_ms) else ""
        return f"ttft_ms={self.ttft_ms:g},tpot_ms={self.tpot_ms:g}{e2el}"


@dataclass(frozen=True)
class ServedRequest(RequestTiming):
    """One request's timing where ``start`` is its arrival (run-relative seconds), and its prompt length. TTFT, TPOT,
    E2E and gaps are RequestTiming's: one rule for both paths (a one-token request has no TPOT)."""

    prompt_tokens: int


def distribution(name: str, values_s: list[float]) -> dict[str, float]:
    """``{name}_mean_ms``, ``_p50_ms``, ``_p90_ms``, ``_p99_ms`` of the defined values given in seconds."""
    ms = [1000 * v for v in defined(values_s)]
    out = {f"{name}_mean_ms": statistics.fmean(ms) if ms else math.nan}
    out.update({f"{name}_p{q}_ms": percentile(ms, q) for q in (50, 90, 99)})
    return out


def serving_metrics(served: list[ServedRequest], duration_s: float, slo: Slo) -> dict[str, float]:
    done = [r for r in served if r.stamps]
    output = sum(len(r.stamps) for r in done)
    gaps = [g for r in done for g in r.gaps_s]
    # a one-token request has no TPOT (nan), so none to miss the target with
    good = [r for r in done if 1000 * r.ttft_s <= slo.ttft_ms and not 1000 * r.tpot_s > slo.tpot_ms
            and 1000 * r.e2e_s <= slo.e2el_ms]
    out = {"request_throughput_rps": len(done) / duration_s, "output_tokens_per_s": output / duration_s,
           "total_tokens_per_s": (output + sum(r.prompt_tokens for r in done)) / duration_s,
           "goodput_rps": len(good) / duration_s, "slo_attainment": len(good) / len(served) if served else math.nan,
           "duration_s": duration_s}
    for name, values in (("ttft", [r.ttft_s for r in done]), ("tpot", [r.tpot_s for r in done]),
                         ("itl", gaps), ("e2e", [r.e2e_s for r in done])):
        out.update(distribution(name, values))
    # The skeleton's columns, filled from the same figures so every row reads alike.
    out.update({"tokens_per_s": out["output_tokens_per_s"], "ttft_ms": out["ttft_mean_ms"],
                "tpot_ms": out["tpot_mean_ms"], "e2e_ms": out["e2e_mean_ms"], "itl_p50_ms": out["itl_p50_ms"],
                "itl_p95_ms": 1000 * percentile(gaps, 95), "itl_p99_ms": out["itl_p99_ms"]})
    return out


class RunClock:
    """Seconds since the run started; ``wait_until`` sleeps until an arrival."""

    def __init__(self, device: str):
        self.device = device
        synchronize(device)
        self.start = time.perf_counter()

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.start

    def wait_until(self, t: float) -> None:
        delay = t - (time.perf_counter() - self.start)
        if delay > 0:
            time.sleep(delay)


def timed_serve(comp: Composition, model: PreTrainedModel, requests: list[Request], sampling: Sampling,
                device: str, meter: EnergyMeter | None = None, max_concurrency: int = 0
                ) -> tuple[Generation, list[ServedRequest], float, float | None]:
    """One timed run over all requests: (what the decoder returned, ServedRequest per request, duration, joules
    of the run: None without a ``meter`` or when its counter could not be read). ``max_concurrency``: at most that
    many requests in flight (0: no limit), latencies from when each was sent (bench/scenarios/concurrency.py)."""
    stamps: dict[int, list[float]] = defaultdict(list)
    clock = RunClock(device)
    gate = ConcurrencyGate(requests, max_concurrency, clock) if max_concurrency else None
    if meter is not None:  # inside the synchronized clock reads, so the counter spans exactly the timed GPU work
        meter.start()

    def emit(i: int, tokens) -> None:
        now = clock.now()
        stamps[i].extend([now] * len(tokens))
        if gate is not None:
            gate.emitted(i, len(tokens), now)

    out = comp.decoder.serve(model, comp.cache_factory(model), gate.requests if gate else requests, sampling, emit,
                             gate or clock, cache=comp.cache)
    duration = clock.now()
    joules = meter.stop() if meter is not None else None
    served = [ServedRequest(gate.sent_at(r.index) if gate else r.arrival_s, tuple(stamps[r.index]), len(r.prompt))
              for r in requests]
    return out, served, duration, joules


def probe_serving_cache(comp: Composition, model: PreTrainedModel, requests: list[Request],
                        sampling: Sampling) -> dict[str, Any]:
    """Untimed pass (also the warm-up), all at t=0, reading the bytes every live cache really holds after each
    emission. An engine that batches is probed on the first ``PROBE_REQUESTS`` together; a decoder that serves one
    request at a time on the longest request alone (its peak is the run's). A cache that holds no K/V (naive) only
    warms up, on two tokens of the first request. Caches that went out of scope are no longer counted (weak
    references)."""
    if comp.cache is not None and not comp.cache.holds_kv:
        warm = [Request(0, requests[0].prompt, min(2, requests[0].max_new_tokens), 0.0)]
        comp.decoder.serve(model, comp.cache_factory(model), warm, sampling, lambda i, t: None, RunClock("cpu"),
                           cache=comp.cache)
        return {"cache_bytes_peak": 0}
    watch = CacheWatch(comp.cache_factory(model), keep=False)

    def emit(i: int, tokens) -> None:
        watch.read()
        if why := watch.failure():  # each emission follows a finished forward: every hook has run
            raise StrategyFailed(why)

    if isinstance(comp.decoder, RequestEngine):
        chosen = requests[:PROBE_REQUESTS]
    else:
        chosen = [max(requests, key=lambda r: len(r.prompt) + r.max_new_tokens)]
    first = [Request(i, r.prompt, r.max_new_tokens, 0.0) for i, r in enumerate(chosen)]
    out = comp.decoder.serve(model, watch.new_cache, first, sampling, emit, RunClock("cpu"), cache=comp.cache)
    peak = max(watch.peak, int(out.stats.get("pool_bytes", 0)))  # engines that own a block pool report its bytes
    return {"cache_bytes_peak": peak} if comp.cache is not None else {}


def check_served(out: Generation, max_new_tokens: dict[int, int]) -> None:
    """Raise if a request was refused or not given exactly its ``max_new_tokens`` (request index -> count): such a
    cell fails, it never makes a number."""
    if out.failures:
        raise RuntimeError(f"{len(out.failures)} request(s) failed: {next(iter(out.failures.values()))}")
    short = [i for i, n in max_new_tokens.items() if len(out.tokens[i]) != n]
    if short:
        i = short[0]
        raise RuntimeError(f"request {i} produced {len(out.tokens[i])} tokens, not {max_new_tokens[i]}")


def run_serving(cell: Any, comp: Composition, loaded: LoadedModel, workload: Any, sampling: Sampling
                ) -> tuple[dict[str, Any], dict, dict, list[list[int]]]:
    """The timed part of a request-workload cell: (row figures, spreads, samples, tokens of the last repeat)."""
    model = loaded.model
    requests = workload.requests(loaded.tokenizer, cell.request_rate, cell.burstiness, cell.seed)
    requests = requests[: cell.num_requests] if cell.num_requests else requests
    if cell.strategy == "naive" and (few := getattr(workload, "reference_prompts", None)):
        requests = requests[:few]  # naive is O(n²): it serves the first few (its num_requests column says how many)
    slo = Slo.parse(cell.slo)
    figures = probe_serving_cache(comp, model, requests, sampling)
    runs, samples = [], {"ttft_ms": [], "itl_ms": []}
    meter, joules, tokens = EnergyMeter(cell.device), [], []
    for _ in range(cell.repeats):
        out, served, duration, used = timed_serve(comp, model, requests, sampling, cell.device, meter,
                                                  getattr(cell, "max_concurrency", 0))
        runs.append(serving_metrics(served, duration, slo))
        joules.append(used)
        tokens.append(sum(len(r.stamps) for r in served))
        samples["ttft_ms"] += [1000 * r.ttft_s for r in served if r.stamps]
        samples["itl_ms"] += [1000 * g for r in served for g in r.gaps_s]
    check_served(out, {r.index: r.max_new_tokens for r in requests})
    spreads = {k: spread([r[k] for r in runs]) for k in TIMED}
    row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    energy, per_repeat = energy_columns(meter, joules, tokens)
    row.update(energy)
    spreads.update({k: spread(v) for k, v in per_repeat.items()})
    row.update(figures)
    row.update({"num_requests": len(requests), "request_rate": cell.request_rate, "burstiness": cell.burstiness,
                "max_concurrency": getattr(cell, "max_concurrency", 0), "slo": str(slo),
                "prompt_tokens": sum(len(r.prompt) for r in requests),
                "generated_tokens": sum(map(len, out.tokens))})
    row.update(out.stats)  # of the last timed repeat
    row.update(cuda_memory(cell.device))
    return row, spreads, samples, out.tokens
