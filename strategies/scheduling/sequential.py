"""`sequential`: one request at a time, in arrival order, with the given cache (``full`` by default).

It is the reference of every request workload: each request's greedy tokens from a batching or scheduling
strategy must equal the ones ``sequential`` gives that request. Over ``prefix-cache`` it is the
continuous engine limited to one running request, so cached prefixes are reused across requests; over ``paged`` it
is step decoding with a paged cache per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, Emit, Generation, NewCache
from strategies.core.requests import Request, ServeClock
from strategies.core.sampling import Sampling
from strategies.decoding.step import StepDecoding


@dataclass
class Sequential(StepDecoding):
    name = "sequential"
    lossless = True
    summary = "one request at a time in arrival order (the request workloads' token reference)"

    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        from strategies.caches.prefix_cache import PrefixCache

        if isinstance(cache, PrefixCache):
            from strategies.scheduling.continuous import ContinuousBatching

            engine = ContinuousBatching(max_batch=1, block_size=cache.block_size)  # prefix-cache.block_size rules
            return engine.serve(model, new_cache, requests, sampling, emit, clock, cache=cache)
        return super().serve(model, new_cache, requests, sampling, emit, clock, cache=cache)
