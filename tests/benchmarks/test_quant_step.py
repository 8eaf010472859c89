"""Micro-benchmark: one layer's decode step over the quantized caches against the full cache (pytest-benchmark;
`make test-bench` runs it, `make test` does not).

Shape: SmolLM2-135M's attention (9 query heads, 3 KV heads, head_dim 64), one request holding 1,000 tokens (992
quantized in blocks of 32, 8 in the full-precision residual window), one new token per step: the cache update
(which, for the quantized caches, dequantizes every old token into the shared work buffer) and the attention that
reads its output. The step is undone by ``crop(-1)`` so every round times the same state; the block quantization
that happens once every 32 steps is left out (its cost per step is 1/32 of quantizing 32 tokens).

Where quant-int4 decodes slower than full at 1k context, this says how much of it is the dequantize (the ``update``
rows) and how much the attention (the same in all three).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strategies.caches.full import PreallocatedLayer
from strategies.caches.quantized import QuantizedLayer, WorkBuffer

HEADS, KV_HEADS, DIM, TOKENS, GROUP, RESIDUAL = 9, 3, 64, 1000, 64, 32
BITS = {"full": None, "quant-int8": 8, "quant-int4": 4}


def layer_holding(kind: str, keys: torch.Tensor, values: torch.Tensor):
    bits = BITS[kind]
    if bits is None:
        layer = PreallocatedLayer(TOKENS + 1)
    else:
        layer = QuantizedLayer(bits, bits, GROUP, RESIDUAL, False, (WorkBuffer(TOKENS + 1), WorkBuffer(TOKENS + 1)))
    layer.update(keys, values)
    return layer


def setup(kind: str):
    torch.set_num_threads(1)  # one thread: less sensitive to the other processes of a shared machine
    gen = torch.Generator().manual_seed(0)
    keys, values = (torch.randn(1, KV_HEADS, TOKENS, DIM, generator=gen) for _ in range(2))
    new_k, new_v = (torch.randn(1, KV_HEADS, 1, DIM, generator=gen) for _ in range(2))
    query = torch.randn(1, KV_HEADS, HEADS // KV_HEADS, DIM, generator=gen)  # query heads folded per KV head
    return layer_holding(kind, keys, values), new_k, new_v, query


def step(layer, new_k: torch.Tensor, new_v: torch.Tensor, query: torch.Tensor, attend: bool = True) -> torch.Tensor:
    k, v = layer.update(new_k, new_v)
    out = F.scaled_dot_product_attention(query, k, v) if attend else k
    if isinstance(layer, PreallocatedLayer):
        layer.length -= 1
    else:
        layer.crop(-1)
    return out


def test_quantized_steps_attend_close_to_full():
    full = step(*setup("full"))
    for kind, tol in (("quant-int8", 0.02), ("quant-int4", 0.2)):
        got = step(*setup(kind))
        assert got.shape == full.shape and (got - full).abs().max() < tol, kind


@pytest.mark.parametrize("kind", list(BITS))
@pytest.mark.parametrize("part", ["update", "update+attention"])
def test_quantized_decode_step(benchmark, kind, part):
    layer, new_k, new_v, query = setup(kind)
    benchmark.group = f"quantized cache decode step, one layer, {TOKENS} tokens: {part}"
    benchmark(step, layer, new_k, new_v, query, part != "update")
