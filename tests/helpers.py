"""Small helpers shared by tests: run a strategy by name and collect its tokens."""

from __future__ import annotations

from strategies.core.sampling import GREEDY, Sampling
from strategies.registry import compose


def generate(model, spec: str, prompts: list[list[int]], max_new: int, params=None,
             sampling: Sampling = GREEDY) -> list[list[int]]:
    comp = compose(spec, params or {})

    def new_cache(batch: int, max_len: int):
        return comp.cache.new_cache(model, batch, max_len) if comp.cache else None

    return comp.decoder.generate(model, new_cache, prompts, max_new, sampling, lambda i, t: None)


def score(model, spec: str, prompt: list[int], continuation: list[int], params=None):
    comp = compose(spec, params or {})

    def new_cache(batch: int, max_len: int):
        return comp.cache.new_cache(model, batch, max_len) if comp.cache else None

    return comp.decoder.score(model, new_cache, prompt, continuation)
