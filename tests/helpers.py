"""Small helpers shared by tests: run a strategy by name and collect its tokens."""

from __future__ import annotations

from strategies.core.sampling import GREEDY, Sampling
from strategies.registry import Composition, compose


def prepared(model, spec: str, params=None, load=None) -> Composition:
    """``spec`` composed and prepared for ``model`` (drafts built), as the runner does before warm-up."""
    comp = compose(spec, params or {})
    comp.decoder.prepare(model, load=load)
    return comp


def generate(model, spec: str, prompts: list[list[int]], max_new: int, params=None,
             sampling: Sampling = GREEDY) -> list[list[int]]:
    comp = prepared(model, spec, params)
    return comp.decoder.generate(model, comp.cache_factory(model), prompts, max_new, sampling, lambda i, t: None).tokens


def score(model, spec: str, prompt: list[int], continuation: list[int], params=None):
    comp = prepared(model, spec, params)
    return comp.decoder.score(model, comp.cache_factory(model), prompt, continuation)
