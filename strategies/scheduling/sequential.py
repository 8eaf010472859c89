"""`sequential`: one request at a time, in arrival order, with the given cache (``full`` by default).

It is the reference of every request workload: each request's greedy tokens from a batching or scheduling
strategy must equal the ones ``sequential`` gives that request. Over ``prefix-cache`` it is the
continuous engine limited to one running request, so cached prefixes are reused across requests; over ``paged`` it
is step decoding with a paged cache per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.decoding.step import StepDecoding


@dataclass
class Sequential(StepDecoding):
    name = "sequential"
    lossless = True
    summary = "one request at a time in arrival order (the request workloads' token reference)"

    def serve(self, model, new_cache, requests, sampling, emit, clock, cache=None):
        from strategies.caches.prefix_cache import PrefixCache

        if isinstance(cache, PrefixCache):
            from strategies.scheduling.continuous import ContinuousBatching

            engine = ContinuousBatching(max_batch=1, block_size=cache.block_size)  # prefix-cache.block_size rules
            tokens = engine.serve(model, new_cache, requests, sampling, emit, clock, cache=cache)
            self._stats, self.failures = engine.stats(), engine.failures
            return tokens
        self._stats, self.failures = {}, {}
        return super().serve(model, new_cache, requests, sampling, emit, clock, cache=cache)

    def stats(self):
        return getattr(self, "_stats", {})
