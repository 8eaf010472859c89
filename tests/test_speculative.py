"""Speculating decoders: token-exact vs naive greedy on the real model, the rejection-sampling rule on a toy,
the draft path's sanity (acceptance rises with the draft's depth) and the decoder's stats."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from bench.models import load_model
from strategies.core.sampling import GREEDY, Sampling
from strategies.decoding.drafts import truncated
from strategies.decoding.prompt_lookup import lookup
from strategies.decoding.speculation import accept_drafts
from strategies.registry import compose
from tests.helpers import generate, prepared

MAX_NEW = 20


def run(model, spec: str, params: dict, prompts, max_new: int, sampling=GREEDY, emit=None):
    """Tokens and the decoder's stats."""
    comp = prepared(model, spec, {spec.split("+")[0]: params},
                    load=lambda name: load_model(name).model)  # drafts named by a model spec
    out = comp.decoder.generate(model, comp.cache_factory(model), prompts, max_new, sampling,
                                emit or (lambda i, t: None))
    return out.tokens, out.stats


@pytest.fixture(scope="module")
def naive_tokens(smol, smol_prompts):
    return generate(smol.model, "naive", smol_prompts[:2], MAX_NEW)


@pytest.mark.parametrize("spec,params", [
    ("speculative", {"draft": "layers:20", "k": 3}),
    ("speculative", {"draft": "int8", "k": 4}),
    ("speculative", {"draft": "bf16", "k": 4}),
    ("speculative+naive", {"draft": "layers:6", "k": 2}),
    ("prompt-lookup", {"ngram": 2, "k": 5}),
    ("lookahead", {"window": 4, "ngram": 3, "guess": 3}),
])
def test_speculating_decoders_reproduce_naive_greedy(smol, smol_prompts, naive_tokens, spec, params):
    decoder = spec.split("+")[0]
    assert generate(smol.model, spec, smol_prompts[:2], MAX_NEW, {decoder: params}) == naive_tokens


def test_speculative_with_a_separate_draft_model(smol, smol_prompts, naive_tokens):
    """draft=<model>: any causal LM sharing the tokenizer (here the embedded model loaded a second time)."""
    out, stats = run(smol.model, "speculative", {"draft": "smollm2-135m", "k": 4}, smol_prompts[:2], MAX_NEW)
    assert out == naive_tokens
    assert stats["acceptance_rate"] == 1.0  # the same weights: every draft is the target's own choice
    # 2 prompts: a prefill each, then steps of k drafts + 1 target token (capped at the end)
    assert stats["target_forwards"] == 2 * (1 + -(-(MAX_NEW - 1) // 5))
    assert stats["target_forwards_per_token"] < 0.5


@pytest.mark.parametrize("spec", ["speculative", "hf-assisted"])
def test_a_draft_is_built_by_prepare_only(tiny, spec):
    """Building a draft inside generate would put its cost in the first timed call: an unprepared decoder refuses,
    and one prepared for another model does too (a layers:N draft shares its target's modules)."""
    comp = compose(spec, {spec: {"draft": "layers:1"}})
    prompts = [[3, 5, 7, 9]]
    with pytest.raises(RuntimeError, match=r"call prepare\(model\) before generate"):
        comp.decoder.generate(tiny.model, comp.cache_factory(tiny.model), prompts, 4, GREEDY, lambda i, t: None)
    other = load_model("random:tiny-llama", seed=1).model
    comp.decoder.prepare(other)
    with pytest.raises(RuntimeError, match=r"call prepare\(model\) before generate"):
        comp.decoder.generate(tiny.model, comp.cache_factory(tiny.model), prompts, 4, GREEDY, lambda i, t: None)
    comp.decoder.prepare(tiny.model)
    out = comp.decoder.generate(tiny.model, comp.cache_factory(tiny.model), prompts, 4, GREEDY, lambda i, t: None)
    assert len(out.tokens[0]) == 4 and out.stats["target_forwards"] >= 1


def test_layer_truncated_draft_is_a_view(smol):
    draft = truncated(smol.model, 5)
    assert len(draft.model.layers) == 5 and draft.config.num_hidden_layers == 5
    assert len(smol.model.model.layers) == 30 and smol.model.config.num_hidden_layers == 30
    assert draft.model.layers[4] is smol.model.model.layers[4] and draft.lm_head is smol.model.lm_head
    with pytest.raises(ValueError, match=r"N must be in 1\.\.29"):
        truncated(smol.model, 30)


@pytest.mark.parametrize("shape", ["tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-gpt2"])
def test_layer_draft_works_for_other_families(shape):
    from bench.models import load_model

    model = load_model(f"random:{shape}").model
    prompts = [[3, 5, 7, 9, 11]]
    ref = generate(model, "full", prompts, 8)
    assert generate(model, "speculative", prompts, 8, {"speculative": {"draft": "layers:1", "k": 3}}) == ref


def test_acceptance_rises_with_draft_depth(smol, smol_prompts):
    rates = [run(smol.model, "speculative", {"draft": f"layers:{n}", "k": 3}, smol_prompts[:2], MAX_NEW)[1]
             ["acceptance_rate"] for n in (6, 26)]
    assert rates[0] < rates[1]


def test_prompt_lookup_finds_the_most_recent_longest_match():
    seq = torch.tensor([1, 2, 3, 9, 1, 2, 3, 4, 5, 6, 0, 2, 3])
    assert lookup(seq, 3, 4) == [4, 5, 6, 0]  # "2 3" -> the later occurrence, continued
    assert lookup(seq, 3, 2) == [4, 5]
    assert lookup(torch.tensor([7, 8, 9]), 3, 4) == []  # nothing repeats
    assert lookup(torch.tensor([1, 2, 1, 2]), 2, 5) == [1, 2]  # stops at the end of the text


def test_emits_exactly_max_new_tokens_in_variable_chunks(smol, smol_prompts):
    chunks: list[list[int]] = []
    prompt = smol_prompts[0] + smol_prompts[0][-12:]  # a repeated tail gives the lookup something to propose
    out, stats = run(smol.model, "prompt-lookup", {"k": 6}, [prompt], 17, emit=lambda i, t: chunks.append(list(t)))
    assert sum(chunks, []) == out[0] and len(out[0]) == 17
    assert stats["target_forwards"] == len(chunks)  # one forward per emission: the prefill, then each step


TARGET = torch.tensor([0.05, 0.30, 0.10, 0.25, 0.20, 0.10])
DRAFT = torch.tensor([0.40, 0.05, 0.25, 0.05, 0.05, 0.20])


def test_rejection_sampling_follows_the_target_not_the_draft():
    """First token of a step: draft d ~ q, then accept/resample. Over many seeds it is distributed as p."""
    gen = torch.Generator().manual_seed(0)
    trials = 6000
    counts = torch.zeros(len(TARGET))
    p = torch.stack([TARGET, torch.full_like(TARGET, 1 / len(TARGET))])
    for _ in range(trials):
        d = int(torch.multinomial(DRAFT, 1, generator=gen))
        accepted, token = accept_drafts(p, DRAFT.unsqueeze(0), [d], gen)
        counts[d if accepted else token] += 1
    assert chisquare(counts, TARGET * trials).pvalue > 1e-3
    assert chisquare(counts, DRAFT * trials).pvalue < 1e-12


def test_greedy_distributions_accept_exactly_the_matching_prefix():
    p = torch.eye(4)[[2, 0, 3]]  # target argmax at the three positions: 2, 0, 3
    q = torch.eye(4)[[2, 1]]
    assert accept_drafts(p, q, [2, 1]) == (1, 0)  # first draft kept, second replaced by the target's 0
    assert accept_drafts(p, torch.eye(4)[[2, 0]], [2, 0]) == (2, 3)


def test_sampled_speculation_is_seeded_and_full_length(smol, smol_prompts):
    s = Sampling(temperature=0.8, top_p=0.9, seed=5)
    params = {"speculative": {"draft": "layers:20", "k": 3}}
    a = generate(smol.model, "speculative", smol_prompts[:1], 12, params, sampling=s)
    assert len(a[0]) == 12 and a == generate(smol.model, "speculative", smol_prompts[:1], 12, params, sampling=s)
