"""The lean decode forward computes what transformers' forward computes, over the same cache."""

from __future__ import annotations

import pytest
import torch

from bench.models import load_model
from strategies.caches.full import FullCache
from strategies.core.forward import decode_one_token, prefill
from strategies.kernels.lean_forward import lean_decoder


@pytest.mark.parametrize("spec", ["smollm2-135m", "random:tiny-qwen2", "random:tiny-qwen3", "random:tiny-mistral"])
def test_lean_decode_logits_equal_transformers_forward(spec, request):
    model = request.getfixturevalue("smol").model if spec == "smollm2-135m" else load_model(spec).model
    seq = torch.randint(10, 2000, (1, 40))
    caches = [FullCache().new_cache(model, 1, 40) for _ in range(2)]
    lean = lean_decoder(model, caches[1])
    assert lean is not None
    with torch.inference_mode():
        for cache in caches:
            prefill(model, cache, seq[:, :30])
        for length in range(31, 40):
            ref = decode_one_token(model, caches[0], seq, length)
            got = decode_one_token(model, caches[1], seq, length, lean)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert caches[0].layers[0].get_seq_length() == caches[1].layers[0].get_seq_length() == 39


def test_lean_is_refused_for_other_families_and_caches_that_do_not_opt_in():
    gpt2 = load_model("random:tiny-gpt2").model
    assert lean_decoder(gpt2, FullCache().new_cache(gpt2, 1, 8)) is None
    llama = load_model("random:tiny-llama").model
    assert lean_decoder(llama, None) is None
