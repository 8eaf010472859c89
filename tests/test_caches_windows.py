"""Cache bytes against their closed forms, rollback (crop) for every cache of issue 4's first half, families."""

from __future__ import annotations

import pytest
import torch

from bench.models import load_model
from strategies.core.forward import forward_logits
from strategies.registry import compose
from tests.helpers import generate

PROMPT = list(range(5, 45))  # 40 tokens


def token_bytes(model) -> int:
    """K and V of one token over all layers, fp32."""
    cfg = model.config
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4


def fill(model, spec, params, tokens, max_len=400):
    comp = compose(spec, params)
    cache = comp.cache.new_cache(model, 1, max_len)
    with torch.inference_mode():
        forward_logits(model, torch.tensor([tokens[:40]]), cache, 0)
        for t in range(40, len(tokens)):
            forward_logits(model, torch.tensor([[tokens[t]]]), cache, t)
    return cache


@pytest.mark.parametrize("spec,params,held", [
    ("sliding-window", {"window": 16, "reserve": 0}, 17),
    ("sliding-window", {"window": 16, "reserve": 8}, 25),
    ("sinks", {"sinks": 4, "window": 16, "reserve": 2}, 23),
])
def test_window_bytes_are_bounded_by_the_window_whatever_the_length(tiny, spec, params, held):
    sizes = {n: fill(tiny.model, spec, {spec: params}, list(range(n))).nbytes() for n in (60, 200)}
    assert sizes[60] == sizes[200] == held * token_bytes(tiny.model)


def test_static_holds_its_whole_reservation_and_refuses_longer_requests(tiny):
    cache = fill(tiny.model, "static", {"static": {"max_len": 128}}, PROMPT, max_len=100)
    assert cache.nbytes() == 128 * token_bytes(tiny.model)
    with pytest.raises(ValueError, match="static cache holds 128 tokens; the request needs 129"):
        compose("static", {"static": {"max_len": 128}}).cache.new_cache(tiny.model, 1, 129)
    default = compose("static", {}).cache
    assert default.capacity(tiny.model) == 2048  # min(4096, the tiny model's context)


def test_chunk_summary_bytes_follow_its_pooling_rule(tiny):
    # 40 prompt tokens + 20 decoded; pooling happens before each update from what was cached before it
    cache = fill(tiny.model, "chunk-summary", {"chunk-summary": {"chunk": 4, "keep_last": 8}}, list(range(60)))
    layer = cache.layers[0]
    exact = 59 - 4 * layer.summaries  # tokens cached before the last update, minus pooled ones, plus the last one
    assert 8 <= exact - 1 < 8 + 4 and layer.summaries == (59 - 8) // 4
    assert cache.nbytes() == (layer.summaries + exact + 1) * token_bytes(tiny.model)


ROLLBACK_CASES = [
    ("paged", {"block_size": 4}), ("static", {}), ("sliding-window", {"window": 8, "reserve": 3}),
    ("sinks", {"sinks": 2, "window": 8, "reserve": 3}),
    ("chunk-summary", {"chunk": 16, "keep_last": 8}),  # pools at the first decode step, not during the drafts
    ("full", {}),
]


@pytest.mark.parametrize("spec,params", ROLLBACK_CASES)
@pytest.mark.parametrize("chunked", [False, True])
def test_rollback_gives_the_state_of_a_cache_that_never_saw_the_tokens(tiny, spec, params, chunked):
    """Feed k extra tokens (one at a time, or as one chunk as speculative verification does), crop them, then
    decode on: logits equal a cache that never saw them, bit for bit."""
    model, comp = tiny.model, compose(spec, {spec: params})
    rolled, clean = comp.cache.new_cache(model, 1, 80), comp.cache.new_cache(model, 1, 80)
    drafts = [90, 91, 92, 93]
    with torch.inference_mode():
        for cache in (rolled, clean):
            forward_logits(model, torch.tensor([PROMPT]), cache, 0)
            for t in range(6):
                forward_logits(model, torch.tensor([[60 + t]]), cache, 40 + t)
        if chunked:
            forward_logits(model, torch.tensor([drafts]), rolled, 46, all_logits=True)
        else:
            for i, d in enumerate(drafts):
                forward_logits(model, torch.tensor([[d]]), rolled, 46 + i)
        rolled.crop(-len(drafts))
        assert rolled.get_seq_length() == clean.get_seq_length()
        for t in range(12):
            token = torch.tensor([[70 + t]])
            expected = forward_logits(model, token, clean, 46 + t)
            assert torch.equal(forward_logits(model, token, rolled, 46 + t), expected)


def test_rolling_back_past_what_a_window_kept_raises(tiny):
    cache = fill(tiny.model, "sliding-window", {"sliding-window": {"window": 8, "reserve": 2}}, list(range(60)))
    cache.crop(-3)  # reserve + 1 tokens: still exact
    with pytest.raises(ValueError, match=r"cannot roll back 1 tokens.*reserve=2"):
        cache.crop(-1)
    cache = fill(tiny.model, "chunk-summary", {"chunk-summary": {"chunk": 4, "keep_last": 8}}, list(range(60)))
    with pytest.raises(ValueError, match="already pooled into summaries"):
        cache.crop(-20)


@pytest.mark.parametrize("spec,message", [
    ("sliding-window.window=0", "window must be >= 1, got 0"),
    ("sinks.sinks=0", "sinks must be >= 1, got 0"),
    ("sliding-window.reserve=-1", "reserve must be >= 0"),
    ("chunk-summary.chunk=1", "chunk must be >= 2 tokens per summary, got 1"),
    ("chunk-summary.keep_last=0", "keep_last must be >= 1, got 0"),
    ("static.max_len=-1", "max_len must be >= 0"),
])
def test_parameters_are_validated(spec, message):
    from strategies.registry import StrategyError, expand, parse_params

    with pytest.raises(StrategyError, match=message):
        expand(spec.split(".")[0], parse_params([spec]))


@pytest.mark.parametrize("family", ["random:tiny-gpt2", "random:tiny-qwen3"])
def test_every_cache_runs_on_other_families(family):
    model = load_model(family).model
    full = generate(model, "full", [PROMPT], 6)
    for spec in ("paged", "static", "sliding-window", "sinks"):  # defaults hold more than 46 tokens: exact
        assert generate(model, spec, [PROMPT], 6) == full, spec
    small = {"paged": {"block_size": 3}, "sliding-window": {"window": 8}, "sinks": {"sinks": 2, "window": 8},
             "chunk-summary": {"chunk": 4, "keep_last": 8}}  # evicting / pooling on this family too
    for spec, params in small.items():
        assert len(generate(model, spec, [PROMPT], 6, {spec: params})[0]) == 6
