"""kv_quant: the quantize -> dequantize error bound (property tests), packing, and the byte closed form."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.kernels import kv_quant


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([4, 8]), symmetric=st.booleans(), groups=st.integers(1, 4),
       group_size=st.sampled_from([2, 4, 8, 16, 32]), tokens=st.integers(1, 7), heads=st.integers(1, 3),
       magnitude=st.sampled_from([1e-3, 1.0, 50.0]), seed=st.integers(0, 2**16))
def test_error_within_half_a_step(bits, symmetric, groups, group_size, tokens, heads, magnitude, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, heads, tokens, groups * group_size, generator=gen) * magnitude
    x[..., 0] += magnitude  # off-centre groups exercise the asymmetric zero point
    q = kv_quant.quantize(x, bits, group_size, symmetric)
    y = kv_quant.dequantize(q)
    step = q.scale.float().repeat_interleave(group_size, dim=-1)
    # exactly scale/2, up to fp32 rounding of the arithmetic itself
    assert ((x - y).abs() <= step / 2 * (1 + 1e-5) + 1e-6 * x.abs()).all()
    assert q.scale.dtype == torch.float16 and (q.zero is None) == symmetric
    # and the step is the tightest the format allows (else a huge scale would pass the bound trivially)
    g = x.unflatten(-1, (groups, group_size))
    span = g.abs().amax(-1) if symmetric else g.amax(-1) - g.amin(-1)
    tight = (span / kv_quant.levels(bits, symmetric)) * (1 + 2**-9) + 2.0**-14 + 2**-10 * g.abs().amax(-1)
    assert (q.scale.float() <= tight).all()


def test_int4_is_packed_two_values_per_byte():
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 1, 64)
    q = kv_quant.quantize(x, 4, 64, symmetric=False)
    assert q.data.dtype == torch.uint8 and q.data.shape == (1, 1, 1, 32)
    codes = torch.round((x - q.zero.float()) / q.scale.float()).to(torch.uint8).flatten()
    assert torch.equal(q.data.flatten() & 15, codes[:32]) and torch.equal(q.data.flatten() >> 4, codes[32:])
    assert int(codes.max()) == 15 and int(codes.min()) == 0  # the full 4-bit range is used
    q8 = kv_quant.quantize(x, 8, 64, symmetric=True)
    assert q8.data.dtype == torch.int8 and int(q8.data.abs().max()) == 127


@pytest.mark.parametrize("bits,symmetric,expected", [(8, True, 64 + 2), (8, False, 64 + 4), (4, True, 32 + 2),
                                                     (4, False, 32 + 4)])
def test_bytes_per_token_closed_form(bits, symmetric, expected):
    # head_dim 64, one group: codes + fp16 scale (+ fp16 zero)
    assert kv_quant.nbytes_per_token(64, bits, 64, symmetric) == expected
    q = kv_quant.quantize(torch.randn(2, 3, 5, 64), bits, 64, symmetric)
    assert sum(t.numel() * t.element_size() for t in q.tensors()) == 2 * 3 * 5 * expected


def test_bad_group_size_names_the_rule():
    with pytest.raises(ValueError, match="group_size 24 must divide head_dim 64"):
        kv_quant.quantize(torch.randn(1, 1, 1, 64), 8, 24, True)
