"""The lean decode forward computes what transformers' forward computes, over the same cache."""

from __future__ import annotations

import pytest
import torch

from bench.models import load_model
from strategies.caches.full import FullCache
from strategies.core.forward import decode_one_token, forward_logits, prefill
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


@pytest.mark.parametrize("spec", ["smollm2-135m", "random:tiny-qwen3"])
def test_lean_verify_of_a_chain_and_a_tree_equals_transformers_forward(spec, request):
    from strategies.decoding.tree import TreeShape, tree_mask
    from strategies.kernels.lean_verify import lean_hidden
    from strategies.training.data import hidden_and_logits

    model = request.getfixturevalue("smol").model if spec == "smollm2-135m" else load_model(spec).model
    seq = torch.randint(10, 2000, (1, 40))
    shape = TreeShape((2, 2, 1))  # 5 nodes after a chain of 2: side branches see only their ancestors
    ids, past = seq[:, 20:27], 20
    pos = torch.tensor([[20, 21] + [22 + d - 1 for d, _ in shape.nodes]])
    mask = tree_mask(shape, past, 2, model.dtype, ids.device)
    caches = [FullCache().new_cache(model, 1, 40) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            prefill(model, cache, seq[:, :past])
        _, ref = hidden_and_logits(model, ids, caches[0], position_ids=pos, attention_mask=mask)
        got = model.get_output_embeddings()(lean_hidden(model, caches[1], ids, pos, mask)).float()
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        for cache in caches:  # a causal chain (mask None) after the tree is cropped away
            cache.crop(-len(shape))
        chain = seq[:, 22:26]
        ref = forward_logits(model, chain, caches[0], 22, all_logits=True)
        got = model.get_output_embeddings()(lean_hidden(model, caches[1], chain, torch.arange(22, 26)[None])).float()
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert caches[0].get_seq_length() == caches[1].get_seq_length() == 26
