"""Sampling: our filtered distributions equal transformers' logits processors chained as ``generate`` chains them,
and ``hf-generate`` given the same options samples the same tokens as our step decoder."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from strategies.core.sampling import Sampling
from tests.helpers import generate

SETTINGS = [
    Sampling(temperature=1.0),
    Sampling(temperature=0.7, top_k=20),
    Sampling(temperature=1.3, top_p=0.8),
    Sampling(temperature=0.9, min_p=0.05),
    Sampling(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.3),
    Sampling(temperature=0.5, top_p=0.5, repetition_penalty=0.8),
]


def transformers_chain(s: Sampling) -> LogitsProcessorList:
    """The processors ``generate`` builds for these options, in its order (penalty first, then the warpers)."""
    chain = LogitsProcessorList()
    if s.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    chain.append(TemperatureLogitsWarper(s.temperature))
    if s.top_k:
        chain.append(TopKLogitsWarper(s.top_k))
    if s.top_p < 1.0:
        chain.append(TopPLogitsWarper(s.top_p))
    if s.min_p:
        chain.append(MinPLogitsWarper(s.min_p))
    return chain


@pytest.mark.parametrize("s", SETTINGS, ids=str)
def test_filtered_distribution_equals_transformers_processors(s):
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    history = torch.randint(0, 300, (4, 40))
    ours = s.probs(logits, history)
    theirs = transformers_chain(s)(history, logits.clone()).softmax(-1)
    assert torch.equal(ours == 0, theirs == 0)  # the same ids filtered out
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert (ours > 0).sum(-1).min() >= 1


def test_repetition_penalty_applies_under_greedy():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    assert Sampling().select(logits, torch.tensor([[0]])).item() == 0
    assert Sampling(repetition_penalty=1.2).select(logits, torch.tensor([[0]])).item() == 1  # 2.0/1.2 < 1.9
    assert Sampling(repetition_penalty=1.2).distribution(logits, torch.tensor([[0]])).tolist() == [[0, 1, 0]]


def test_sampling_is_seeded(tiny):
    prompt = [[1, 2, 3, 4]]
    a = generate(tiny.model, "full", prompt, 12, sampling=Sampling(temperature=1.0, seed=3))
    assert a == generate(tiny.model, "full", prompt, 12, sampling=Sampling(temperature=1.0, seed=3))
    assert a != generate(tiny.model, "full", prompt, 12, sampling=Sampling(temperature=1.0, seed=4))


@pytest.mark.parametrize("s", [Sampling(temperature=0.9, top_k=30, top_p=0.9, min_p=0.01, repetition_penalty=1.2),
                               Sampling(temperature=1.0), Sampling(repetition_penalty=1.3)], ids=str)
def test_hf_generate_uses_the_same_options(tiny, s):
    """Same seed, same processors, same torch.multinomial draws: transformers' generate samples our tokens."""
    prompt = [[5, 9, 11, 13, 9]]
    ours = generate(tiny.model, "full", prompt, 16, sampling=s)
    assert generate(tiny.model, "hf-generate", prompt, 16, sampling=s) == ours
