"""The transformers internals kvbench relies on, checked against the installed version, and the failure an eviction
row shows when they move (a cache that keeps everything is a failed row, never a number)."""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version

from bench.scenarios.prompts import probe_cache
from strategies.caches.eviction import base, hooks
from strategies.core.base import StrategyFailed
from strategies.core.hf_compat import TESTED_TRANSFORMERS, cache_in, cache_kwarg, with_cache
from strategies.core.sampling import GREEDY
from strategies.registry import compose

EVICTORS = ("snapkv", "h2o", "tova", "keynorm")


def test_cache_argument_name_follows_the_installed_transformers(tiny):
    # 5.24 renamed past_key_values to cache (the old name is deprecated until 5.40); our calls use the new one.
    expected = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    assert cache_kwarg(tiny.model) == expected
    assert Version(transformers.__version__) in __import__("packaging.specifiers").specifiers.SpecifierSet(
        TESTED_TRANSFORMERS), f"transformers {transformers.__version__} is outside the tested {TESTED_TRANSFORMERS}"


def test_attention_modules_see_the_cache_under_a_known_name(tiny):
    """The eviction hooks read the cache from the attention module's kwargs: prove it is there."""
    seen = []
    module = hooks.attention_modules(tiny.model)[0]
    handle = module.register_forward_hook(lambda m, a, kw, out: seen.append(cache_in(kw)), with_kwargs=True)
    cache = compose("full", {}).cache.new_cache(tiny.model, 1, 8)
    try:
        with torch.inference_mode():
            tiny.model(input_ids=torch.tensor([[5, 6, 7]]), **with_cache(tiny.model, cache), use_cache=True)
    finally:
        handle.remove()
    assert seen == [cache]


@pytest.mark.parametrize("name", EVICTORS)
def test_an_eviction_whose_hooks_never_run_fails_its_row(tiny, monkeypatch, name):
    # As if a transformers release stopped routing the attention through hookable modules.
    monkeypatch.setattr(hooks, "attention_modules", lambda model: [])
    comp = compose(name, {name: {"budget": 0.25}})
    with pytest.raises(StrategyFailed, match="eviction never ran.*tested >=5.23"):
        probe_cache(comp, tiny.model, [list(range(100, 140))], 4, GREEDY)


@pytest.mark.parametrize("name", EVICTORS)
def test_an_eviction_that_keeps_more_than_its_budget_fails_its_row(tiny, monkeypatch, name):
    monkeypatch.setattr(base.EvictionLayer, "_select", lambda self, index: None)  # scores, but drops nothing
    comp = compose(name, {name: {"budget": 0.25}})
    limit = 10 + (0 if comp.cache.evicts_while_decoding else 3)  # 40-token prompt; 3 decode steps are fed back
    with pytest.raises(StrategyFailed, match=rf"eviction kept 4\d entries in layer 0 where its budget allows {limit}$"):
        probe_cache(comp, tiny.model, [list(range(100, 140))], 4, GREEDY)


@pytest.mark.parametrize("name", EVICTORS)
def test_a_working_eviction_passes_the_check(tiny, name):
    comp = compose(name, {name: {"budget": 0.25}})
    row = probe_cache(comp, tiny.model, [list(range(100, 140))], 4, GREEDY)
    assert row["cache_bytes"] < row["cache_bytes_theory"] / 2
