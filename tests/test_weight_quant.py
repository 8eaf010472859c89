"""Weight-only int8/int4 linears: the kernels compute what the stored integers say, the bytes are the closed
form, and a quantized model still decodes (tokens close to, not equal to, fp32's)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from strategies.kernels.packed_linear import pack_linear_weights
from strategies.kernels.weight_layout import prepare_weights
from strategies.kernels.weight_quant import (
    Int4WeightLinear,
    Int8WeightLinear,
    available,
    decode_weight_bytes,
    quantize_weights,
)


@pytest.fixture(scope="module")
def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(192, 96, bias=True)


@pytest.mark.parametrize("cls", [Int8WeightLinear, Int4WeightLinear])
def test_kernel_equals_its_dequantized_weights(linear, cls):
    q = cls(linear)
    x = torch.randn(5, 192)
    expected = x @ q.dequantized().T + linear.bias
    tol = 1e-4 if cls is Int8WeightLinear else 0.05  # int4's kernel takes bf16 activations
    assert torch.allclose(q(x), expected, atol=tol, rtol=0.02)
    assert q(x.view(1, 5, 192)).shape == (1, 5, 96)


def test_rounding_error_is_what_the_bit_width_allows(linear):
    w = linear.weight.detach()
    span = w.abs().amax(dim=1, keepdim=True)
    assert ((Int8WeightLinear(linear).dequantized() - w).abs() <= span / 127 / 2 + 1e-7).all()
    groups = w.reshape(96, -1, 64)  # 192 inputs: three groups of 64
    step = (groups.amax(2) - groups.amin(2)) / 15
    err = (Int4WeightLinear(linear).dequantized() - w).reshape(96, -1, 64).abs()
    assert (err <= step[..., None] * 0.5 + 0.02 * step[..., None] + 1e-2).all()  # bf16 scale/zero rounding


def test_stored_bytes_are_the_closed_form(linear):
    out, inp = 96, 192
    assert Int8WeightLinear(linear).stored_bytes == out * inp + out * 4 + out * 4  # int8, fp32 scales, bias
    groups = inp // 64
    assert Int4WeightLinear(linear).stored_bytes == out * inp // 2 + groups * out * 2 * 2 + out * 4


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_decodes_and_reads_fewer_bytes(tiny, mode):
    model = copy.deepcopy(tiny.model)
    pack_linear_weights(model)  # quantization takes packed linears too
    dense = decode_weight_bytes(model)
    linears = sum(1 for m in tiny.model.modules() if isinstance(m, nn.Linear))
    assert quantize_weights(model, mode) == linears
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert decode_weight_bytes(model) < dense / (3 if mode == "int8" else 5)
    ids = torch.tensor([[1, 5, 9, 4]])
    with torch.inference_mode():
        ref, got = tiny.model(ids).logits, model(ids).logits
    assert torch.isfinite(got).all()
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.5


def test_weight_bytes_of_a_dense_model_count_each_matrix_once(tiny):
    cfg = tiny.model.config
    h, i, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * i + 2 * h  # q,k,v,o, gate/up/down, two norms
    expected = 4 * (layers * per_layer + h + vocab * h + h)  # + final norm, LM head, one embedding row
    assert decode_weight_bytes(tiny.model) == expected


def test_unknown_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown weight quantization 'int3'; allowed: none, int8, int4"):
        available("int3")
    assert available("int8") is None and available("int4") is None


def test_real_model_int8_keeps_most_greedy_tokens(smol):
    model = copy.deepcopy(smol.model)
    quantize_weights(model, "int8")
    ids = smol.tokenizer("The sea is", return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = smol.model.generate(ids, max_new_tokens=8, do_sample=False)
        got = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert (ref == got).float().mean() >= 0.75


def test_auto_layout_measures_both_and_records_the_choice(tiny):
    model = copy.deepcopy(tiny.model)
    fields = prepare_weights(model, "auto", "none", peer=False)
    assert fields["weights_probe_stock_ms"] > 0 and fields["weights_probe_packed_ms"] > 0
    faster = "packed" if fields["weights_probe_packed_ms"] < fields["weights_probe_stock_ms"] else "stock"
    assert fields["weights"] == faster
    assert fields["weight_bytes"] == decode_weight_bytes(tiny.model)  # packing moves bytes, adds none


def test_peers_keep_stock_layout_but_take_the_quantization(tiny):
    model = copy.deepcopy(tiny.model)
    fields = prepare_weights(model, "packed", "int8", peer=True)
    assert fields["weights"] == "stock" and fields["weight_quant"] == "int8"
    assert any(isinstance(m, Int8WeightLinear) for m in model.modules())
    with pytest.raises(ValueError, match="unknown weights layout 'fast'; allowed: auto, packed, stock"):
        prepare_weights(model, "fast", "none", peer=False)
