"""On the real embedded model: paged, static and windows larger than the sequence reproduce naive greedy tokens."""

from __future__ import annotations

import pytest

from tests.helpers import generate

MAX_NEW = 16


@pytest.fixture(scope="module")
def naive_tokens(smol, smol_prompts):
    return generate(smol.model, "naive", smol_prompts[:2], MAX_NEW)


@pytest.mark.parametrize("spec,params", [
    ("paged", {}),
    ("paged", {"paged": {"block_size": 5}}),  # blocks that straddle the prompt/decode boundary
    ("static", {}),
    ("sliding-window", {"sliding-window": {"window": 512}}),
    ("sinks", {"sinks": {"window": 512}}),
])
def test_lossless_caches_reproduce_naive_greedy(smol, smol_prompts, naive_tokens, spec, params):
    assert generate(smol.model, spec, smol_prompts[:2], MAX_NEW, params) == naive_tokens


def test_a_small_window_changes_tokens_on_a_long_prompt(smol):
    """The windows do evict: with a window far shorter than the prompt, greedy tokens differ from full."""
    from bench.workloads.text import prose_tokens

    prompt = [prose_tokens(smol.tokenizer, 0, 300)]
    full = generate(smol.model, "full", prompt, 8)
    assert generate(smol.model, "sliding-window", prompt, 8, {"sliding-window": {"window": 4}}) != full
