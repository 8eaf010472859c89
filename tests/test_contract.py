"""The contract every registered strategy keeps (kvpress's tests/default_presses.py pattern): one parametrized test
over ``REGISTRY`` on a tiny random llama. A new strategy is covered by registering it; ``TINY_PARAMS`` only sizes
parameters for the tiny model (2 layers, head_dim 16), it never exempts anyone."""

from __future__ import annotations

import math

import pytest
import torch

from bench.models import load_model
from strategies.core.base import CacheStrategy, Unsupported
from strategies.core.forward import forward_logits
from strategies.core.sampling import GREEDY
from strategies.registry import REGISTRY, compose

MAX_NEW = 6
PROMPTS = [list(range(40, 64)), list(range(200, 211)) * 2]  # the second repeats itself: lookups find matches
TINY_PARAMS = {
    # residual 8: the contract's 3-token rollback stays inside the full-precision window, where it is exact (one
    # reaching into the quantized part is approximate by design: see strategies/caches/quantized.py)
    "quant-int8": {"group_size": 8, "residual": 8}, "quant-int4": {"group_size": 8, "residual": 8},
    "quant-mixed": {"group_size": 8, "residual": 8},
    "sliding-window": {"window": 8}, "sinks": {"sinks": 2, "window": 8}, "chunk-summary": {"chunk": 4, "keep_last": 8},
    "snapkv": {"budget": 0.5, "window": 4}, "h2o": {"budget": 0.5, "window": 4}, "tova": {"budget": 0.5},
    "keynorm": {"budget": 0.5},
    "speculative": {"draft": "layers:1", "k": 3}, "hf-assisted": {"draft": "layers:1", "k": 3},
    "lookahead": {"window": 3, "ngram": 3, "guess": 3}, "prompt-lookup": {"k": 3},
    "continuous": {"block_size": 4, "num_blocks": 64}, "paged": {"block_size": 4}, "prefix-cache": {"block_size": 4},
}


@pytest.fixture(scope="module")
def llama():
    return load_model("random:tiny-llama").model


@pytest.fixture(scope="module", autouse=True)
def trained_heads(llama, tmp_path_factory):
    """The heads medusa, eagle and mtp load, for the tiny model (untrained: the contract does not depend on their
    quality), in a cache of this module's own."""
    from strategies.training import store
    from strategies.training.heads import KINDS, build_heads

    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("heads")
        mp.setattr(store, "cache_root", lambda: root)
        for kind in KINDS:
            heads = build_heads(kind, llama.config.hidden_size, 4, torch.arange(llama.config.vocab_size))
            store.save(heads, {}, store.heads_path(llama, kind, 4, store.DEFAULT_STEPS))
        yield


@pytest.fixture(scope="module")
def naive_tokens(llama):
    comp = compose("naive", {})
    return comp.decoder.generate(llama, comp.cache_factory(llama), PROMPTS, MAX_NEW, GREEDY, lambda i, t: None).tokens


def composed(name: str):
    return compose(name, {name: TINY_PARAMS[name]} if name in TINY_PARAMS else {})


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_generate_keeps_the_contract(llama, naive_tokens, name):
    comp = composed(name)
    if comp.cache is not None and (reason := comp.cache.supports(llama)):
        pytest.skip(f"{name}: {reason}")
    emitted: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}
    try:
        comp.decoder.prepare(llama)
        out = comp.decoder.generate(llama, comp.cache_factory(llama), PROMPTS, MAX_NEW, GREEDY,
                                    lambda i, tokens: emitted[i].extend(tokens))
    except Unsupported as e:  # e.g. hf-quantized without its optional backend: a skipped row with the reason
        pytest.skip(f"{name}: {e}")
    assert [len(t) for t in out.tokens] == [MAX_NEW] * len(PROMPTS), "exactly max_new tokens per request"
    assert [emitted[i] for i in range(len(PROMPTS))] == out.tokens, "emitted tokens are the returned tokens"
    assert isinstance(out.stats, dict) and out.failures == {}
    if comp.lossless:
        assert out.tokens == naive_tokens, f"{name} is lossless but diverged from naive's greedy tokens"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_score_is_finite_log_probs_over_the_vocabulary(llama, name):
    comp = composed(name)
    if comp.cache is not None and comp.cache.supports(llama):
        pytest.skip(comp.cache.supports(llama))
    prompt, continuation = PROMPTS[0], list(range(300, 310))
    try:
        comp.decoder.prepare(llama)
        logprobs = comp.decoder.score(llama, comp.cache_factory(llama), prompt, continuation)
    except Unsupported as e:
        pytest.skip(f"{name}: {e}")
    assert logprobs.shape == (len(continuation), llama.config.vocab_size)
    assert torch.isfinite(logprobs).all()
    assert torch.allclose(logprobs.exp().sum(-1), torch.ones(len(continuation)), atol=1e-4)


CACHES = sorted(n for n, cls in REGISTRY.items() if issubclass(cls, CacheStrategy))


def fed(model, strategy: CacheStrategy, tokens: list[int]):
    cache = strategy.new_cache(model, 1, 64)
    with torch.inference_mode():
        forward_logits(model, torch.tensor([tokens[:24]]), cache, 0)  # prefill, then one token per step
        for t in range(24, len(tokens)):
            forward_logits(model, torch.tensor([[tokens[t]]]), cache, t)
    return cache


@pytest.mark.parametrize("name", CACHES)
def test_caches_hold_bytes_and_roll_back_exactly_or_refuse(llama, name):
    strategy = composed(name).cache
    tokens = list(range(100, 130))
    if not strategy.holds_kv:
        assert strategy.new_cache(llama, 1, 64) is None  # naive recomputes: nothing to hold or roll back
        return
    rolled, clean = fed(llama, strategy, tokens), fed(llama, strategy, tokens[:27])
    assert rolled.nbytes() > 0 and rolled.check() is None
    before = rolled.get_seq_length()
    try:
        rolled.crop(-3)
    except ValueError as e:  # refusing is allowed, with the reason
        assert str(e)
        return
    if getattr(strategy, "evicts_while_decoding", False):  # h2o/tova: the newest entries go; what decoding
        assert rolled.get_seq_length() == before - 3   # evicted meanwhile stays evicted
        return
    assert rolled.get_seq_length() == clean.get_seq_length()  # windows keep their length, others shrink
    with torch.inference_mode():
        a = forward_logits(llama, torch.tensor([[7]]), rolled, 27)
        b = forward_logits(llama, torch.tensor([[7]]), clean, 27)
    assert torch.equal(a, b), f"{name}: crop(-3) is not the state of a cache that never saw those tokens"
    assert not math.isnan(float(a.sum()))
