"""Score-based eviction: budgets, original positions, recomputed attention, hooks always removed, rollback."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from bench.models import load_model
from strategies.caches.eviction.base import EvictionCache, EvictionLayer
from strategies.core.forward import forward_logits
from strategies.core.hf_compat import with_cache
from strategies.registry import StrategyError, compose, expand, parse_params
from tests.helpers import generate, score

EVICTORS = ("snapkv", "h2o", "tova", "keynorm")
SMALL = {"snapkv": {"window": 4}, "h2o": {"window": 4}}


def hooks_on(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def feed(model, cache, ids: list[int], start: int) -> torch.Tensor:
    with torch.inference_mode():
        return forward_logits(model, torch.tensor([ids]), cache, start)[-1]


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen3", "tiny-gpt2"])
@pytest.mark.parametrize("name", EVICTORS)
def test_budget_after_prefill_and_original_positions(shape, name):
    model = load_model(f"random:{shape}").model
    params = {name: {"budget": 0.25, **SMALL.get(name, {})}}
    prompt, steps = list(range(100, 160)), [7, 8, 9, 10, 11]  # 60 tokens -> budget 15
    full = compose("full", {}).cache.new_cache(model, 1, 65)
    cache = compose(name, params).cache.new_cache(model, 1, 64)
    feed(model, full, prompt, 0), feed(model, cache, prompt, 0)
    assert [layer.get_seq_length() for layer in cache.layers] == [15] * len(cache.layers)
    for i, t in enumerate(steps):
        feed(model, full, [t], 60 + i), feed(model, cache, [t], 60 + i)
    decoding = compose(name, params).cache.evicts_while_decoding
    for depth, (layer, reference) in enumerate(zip(cache.layers, full.layers)):
        # entries in position order (slots are not, once a decode step has swapped a survivor into a victim's)
        pos, order = layer.positions.long().sort(dim=-1)
        keys = layer.keys.gather(2, order.unsqueeze(-1).expand_as(layer.keys))
        assert pos.shape[-1] == (15 if decoding else 20)
        assert (pos.diff(dim=-1) > 0).all() and int(pos.min()) >= 0 and int(pos.max()) == 64
        if not decoding:  # the decoded tokens were appended, never evicted
            assert pos[..., -5:].tolist() == [[[60, 61, 62, 63, 64]] * pos.shape[1]]
        # each kept entry is the full cache's entry at its original position: nothing renumbered or re-rotated
        # (past layer 0 only the prompt's: decoded tokens attended over the evicted cache, so they differ)
        kept = reference.keys[:, :, :65].gather(2, pos.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1]))
        exact = pos < (65 if depth == 0 else 60)
        assert exact.sum() >= 10
        torch.testing.assert_close(keys[exact], kept[exact])
    assert cache.nbytes() < full.nbytes()


@dataclass
class _Recording(EvictionCache):
    name: ClassVar[str] = "recording"
    summary: ClassVar[str] = "test-only: records the prefill attention it is given"
    seen: ClassVar[dict] = {}

    def score(self, layer: EvictionLayer, attention, prefill: bool) -> torch.Tensor:
        probs = attention(layer.get_seq_length())
        self.seen[len(self.seen)] = probs
        return probs.sum(2)


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen3", "tiny-gpt2"])
def test_recomputed_attention_equals_the_models_own(shape):
    loaded = load_model(f"random:{shape}")
    model, ids = loaded.model, torch.tensor([list(range(300, 320))])
    _Recording.seen = {}
    cache = _Recording(budget=4).new_cache(model, 1, 20)
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, **with_cache(model, cache), output_attentions=True, use_cache=True)
    finally:
        model.set_attn_implementation("sdpa")
    for i, weights in enumerate(out.attentions):  # [1, heads, 20, 20] -> mean over each KV head's group
        kv_heads = _Recording.seen[i].shape[1]
        torch.testing.assert_close(_Recording.seen[i], weights.unflatten(1, (kv_heads, -1)).mean(2))


def test_no_hook_is_left_behind(tiny):
    model, prompts = tiny.model, [list(range(40, 80))]
    for name in EVICTORS:
        generate(model, name, prompts, 6, {name: {"budget": 0.5}})
        assert hooks_on(model) == 0, name
        score(model, name, prompts[0], [5, 6, 7, 8], {name: {"budget": 0.5}})
        assert hooks_on(model) == 0, name
    with compose("h2o", {}).cache.new_cache(model, 1, 8) as cache:
        assert hooks_on(model) == len(cache.layers)
    assert hooks_on(model) == 0
    # a forward that fails half-way: the hooks go with the cache
    cache = compose("snapkv", {}).cache.new_cache(model, 1, 8)
    cache.layers[1].update = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        feed(model, cache, [1, 2, 3], 0)
    del cache
    gc.collect()
    assert hooks_on(model) == 0


@pytest.mark.parametrize("name", ["snapkv", "keynorm"])
def test_rollback_equals_never_adding(tiny, name):
    model, params = tiny.model, {name: {"budget": 0.5, **SMALL.get(name, {})}}
    prompt = list(range(100, 140))
    rolled, clean = (compose(name, params).cache.new_cache(model, 1, 64) for _ in range(2))
    feed(model, rolled, prompt, 0), feed(model, clean, prompt, 0)
    for i, t in enumerate([5, 6, 7]):
        feed(model, rolled, [t], 40 + i)
    rolled.crop(-3)
    a, b = feed(model, rolled, [9], 40), feed(model, clean, [9], 40)
    assert torch.equal(a, b)
    assert all(torch.equal(x.positions, y.positions) for x, y in zip(rolled.layers, clean.layers))


@pytest.mark.parametrize("name", ["h2o", "tova"])
def test_rollback_of_decoding_evictors_drops_the_newest_entries(tiny, name):
    model = tiny.model
    cache = compose(name, {name: {"budget": 16}}).cache.new_cache(model, 1, 64)
    feed(model, cache, list(range(100, 140)), 0)
    for i, t in enumerate([5, 6, 7]):
        feed(model, cache, [t], 40 + i)
    cache.crop(-2)
    for layer in cache.layers:
        assert layer.get_seq_length() == 14 and int(layer.positions.max()) <= 40 and layer.seen == 41
    feed(model, cache, [9], 41)
    assert int(cache.layers[0].positions.max()) == 41 and cache.layers[0].get_seq_length() == 15


def test_budget_validation_names_the_range():
    with pytest.raises(StrategyError, match=r"budget must be a fraction in \(0, 1\)"):
        expand("snapkv", parse_params(["snapkv.budget=0"]))
    with pytest.raises(StrategyError, match="whole number of tokens"):
        expand("h2o", parse_params(["h2o.budget=2.5"]))


@dataclass
class _ByPosition(EvictionCache):
    """Test-only: every entry's score is a fixed random number per (step, original position), so which entries a
    step keeps does not depend on where they sit in the buffers."""

    name: ClassVar[str] = "by-position"
    summary: ClassVar[str] = "test-only: scores drawn per (step, position)"
    evicts_while_decoding: ClassVar[bool] = True
    table: ClassVar[torch.Tensor] = torch.rand(200, 200, generator=torch.Generator().manual_seed(0))

    def protected(self) -> int:
        return 3

    def score(self, layer: EvictionLayer, attention, prefill: bool) -> torch.Tensor:
        return self.table[layer.seen][layer.positions.long()]


def test_in_place_decode_eviction_keeps_what_topk_over_position_order_kept():
    layer = EvictionLayer(_ByPosition(budget=8), max_len=40)  # driven directly: no model needed
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(1, 2, 200, 4, generator=gen)  # position p's key and value: keys[..., p, :]
    reference = torch.arange(0)  # the kept positions, in order, as the position-ordered topk it replaced kept them
    # a prompt, one-token steps, a 3-token (speculative) step, rollbacks (negative) and steps after them
    for t in [20] + [1] * 12 + [3] + [1] * 5 + [-2, 3, 1, -1, 1, 1, 2]:
        if t < 0:
            layer.crop(t)
            reference = reference[:t]  # the newest positions go
        else:
            start = layer.seen
            layer.update(keys[:, :, start:start + t], -keys[:, :, start:start + t])
            layer.after_attention(None)
            reference = torch.cat([reference, torch.arange(start, start + t)])
            if len(reference) > 8:
                scores = _ByPosition.table[layer.seen][reference].clone()
                scores[-3:] = torch.inf
                reference = reference[scores.topk(8).indices.sort().values]
        pos, order = layer.positions[0, 0].long().sort()
        assert pos.tolist() == reference.tolist() and layer.get_seq_length() == len(reference)
        assert torch.equal(layer.keys[0, 0, order], keys[0, 0, reference])
        assert torch.equal(layer.values[0, 0, order], -keys[0, 0, reference])
        assert torch.equal(layer.positions[0, 0], layer.positions[0, 1])  # both heads scored alike
    # grown once, for the 3-token step, never per step; the bytes reported are the whole buffers, spare slots too
    assert [t.shape[2] for t in layer.tensors()] == [8 + 3] * 3


@pytest.mark.parametrize("spec", ["smollm2-135m", "random:tiny-qwen3"])
@pytest.mark.parametrize("name", EVICTORS)
def test_lean_decode_evicts_as_transformers_forward_with_its_hooks(spec, name, request):
    """The lean one-token step hands its query to the layer (no hook fires): same logits, same entries kept."""
    from strategies.core.forward import decode_one_token, prefill
    from strategies.kernels.lean_forward import lean_decoder
    from strategies.kernels.lean_verify import lean_hidden

    model = request.getfixturevalue("smol").model if spec == "smollm2-135m" else load_model(spec).model
    seq = torch.randint(10, 2000, (1, 48))
    params = {name: {"budget": 20, **SMALL.get(name, {})}}
    hf, lean_cache = (compose(name, params).cache.new_cache(model, 1, 48) for _ in range(2))
    lean = lean_decoder(model, lean_cache)
    assert lean is not None
    with torch.inference_mode():
        for cache in (hf, lean_cache):
            prefill(model, cache, seq[:, :30])
        for length in range(31, 48):
            ref = decode_one_token(model, hf, seq, length)
            got = decode_one_token(model, lean_cache, seq, length, lean)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        # several tokens at once (a verify) are not the lean path's: transformers' forward and its hooks take them
        assert lean_hidden(model, lean_cache, seq[:, 40:42], torch.arange(47, 49)[None]) is None
    for a, b in zip(hf.layers, lean_cache.layers):
        assert a.get_seq_length() == b.get_seq_length() == (20 if compose(name, params).cache.evicts_while_decoding
                                                          else 37)
        assert torch.equal(a.positions.sort(-1).values, b.positions.sort(-1).values)
    assert hf.check() is None and lean_cache.check() is None
