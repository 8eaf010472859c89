"""oneDNN-packed linears: same values, same tokens, nothing dense left behind, copies and unpacking work."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.models import load_model
from strategies.kernels.packed_linear import PackedLinear, can_pack, pack_linear_weights, unpacked
from tests.helpers import generate

pytestmark = pytest.mark.skipif(not can_pack(load_model("random:tiny-llama").model), reason="no oneDNN on this CPU")


def test_packing_replaces_every_linear_and_keeps_the_values():
    model = load_model("random:tiny-llama").model
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is nn.Linear}
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        assert pack_linear_weights(model) == len(dense)
        after = model(input_ids=ids).logits
    assert not [n for n, m in model.named_modules() if type(m) is nn.Linear]
    for name, weight in dense.items():
        assert torch.equal(model.get_submodule(name).weight, weight), name
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert pack_linear_weights(model) == len(dense)  # a second call changes nothing


def test_a_deep_copy_is_packed_and_unpacked_gives_plain_linears():
    model = load_model("random:tiny-llama").model
    pack_linear_weights(model)
    clone = copy.deepcopy(model)
    q = clone.model.layers[0].self_attn.q_proj
    assert isinstance(q, PackedLinear) and torch.equal(q.weight, model.model.layers[0].self_attn.q_proj.weight)
    plain = unpacked(clone)
    assert type(plain.model.layers[0].self_attn.q_proj) is nn.Linear
    assert not [m for m in plain.modules() if isinstance(m, PackedLinear)]


def test_packed_real_model_gives_the_stock_greedy_tokens(smol_prompts):
    loaded = load_model("smollm2-135m")
    stock = generate(loaded.model, "full", smol_prompts[:2], 24)
    pack_linear_weights(loaded.model)
    assert generate(loaded.model, "full", smol_prompts[:2], 24) == stock
    assert generate(loaded.model, "naive", smol_prompts[:1], 24) == stock[:1]
