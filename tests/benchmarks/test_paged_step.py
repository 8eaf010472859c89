"""Micro-benchmark: one decode step of one sequence over the paged cache, read in place or gathered, against the
full cache (pytest-benchmark; `make test-bench` runs it, `make test` does not).

Shape: SmolLM2-135M's attention (9 query heads, 3 KV heads, head_dim 64), one sequence holding 1,000 tokens in
16-token blocks, one new token per step through every layer of a 30-layer cache (the slots of a step are worked out
once, by its first layer, as in a real forward): the cache update and the SDPA that reads its output.

- ``in place``: the blocks are consecutive ids (a lone sequence in a fresh pool), read as a view of the pool;
- ``gathered``: the same blocks in scattered ids (a fragmented pool), copied out through the table each step;
- ``full``: the preallocated contiguous cache the ratio "paged × full" compares with.

The step is undone by ``crop(-1)`` so every round times the same state.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strategies.caches.block_pool import BlockPool
from strategies.caches.full import PreallocatedLayer
from strategies.caches.paged import PagedCache
from strategies.core.base import KVCache

HEADS, KV_HEADS, DIM, TOKENS, BLOCK, LAYERS = 9, 3, 64, 1000, 16, 30
BLOCKS = -(-(TOKENS + 1) // BLOCK)


def cache_of(kind: str):
    if kind == "full":
        return KVCache([PreallocatedLayer(TOKENS + 1) for _ in range(LAYERS)])
    pool = BlockPool(BLOCKS, BLOCK, LAYERS, KV_HEADS, DIM, layout="head_outer")
    if kind == "gathered":  # freed in reverse: the sequence gets ids BLOCKS-1, BLOCKS-2, ...
        pool.free(list(reversed(pool.allocate(BLOCKS))))
    return PagedCache(LAYERS, 1, BLOCK, BLOCKS, pool=pool)


def setup(kind: str):
    torch.set_num_threads(1)  # one thread: less sensitive to the other processes of a shared machine
    gen = torch.Generator().manual_seed(0)
    cache = cache_of(kind)
    for layer in cache.layers:
        layer.update(*(torch.randn(1, KV_HEADS, TOKENS, DIM, generator=gen) for _ in range(2)))
    new = torch.randn(1, KV_HEADS, 1, DIM, generator=gen)
    query = torch.randn(1, HEADS, 1, DIM, generator=gen)
    return cache, new, query


def step(cache, new: torch.Tensor, query: torch.Tensor) -> list[torch.Tensor]:
    out = [F.scaled_dot_product_attention(query, *layer.update(new, new), enable_gqa=True) for layer in cache.layers]
    cache.crop(-1)
    return out


def test_every_read_attends_as_full():
    full = step(*setup("full"))
    for kind in ("in place", "gathered"):
        cache, new, query = setup(kind)
        got = step(cache, new, query)
        torch.testing.assert_close(torch.stack(got), torch.stack(full))
        stats = cache.stats()
        assert (stats["steps_read_in_place"], stats["steps_gathered"]) == ((2, 0) if kind == "in place" else (0, 2))


@pytest.mark.parametrize("kind", ["full", "in place", "gathered"])
def test_paged_decode_step(benchmark, kind):
    cache, new, query = setup(kind)
    benchmark.group = f"paged decode step, {LAYERS} layers, one sequence of {TOKENS} tokens"
    benchmark(step, cache, new, query)
