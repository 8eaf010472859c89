"""Micro-benchmark: one layer's decode attention over the continuous engine's block pool, before and after the
one-copy layout (pytest-benchmark; `make test-bench` runs it, `make test` does not).

Shape: SmolLM2-135M's attention (9 query heads, 3 KV heads, head_dim 64), 16 requests of ~600 tokens in 16-token
blocks, one new token each — the mixed-chat decode step at full batch.

- ``before``: head-major pool; ``pool[tables]`` then transpose + reshape into a padded batch (second copy), then
  transformers' SDPA path with a mask repeats K/V per query head (third copy);
- ``after``: token-major pool; ``pool[tables]`` is the only copy, the batch is a view, the query heads sharing a
  KV head are folded into the query length (no repeat).

`test_both_layouts_compute_the_same_attention` (also run here) checks they agree before anyone compares timings.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strategies.scheduling.paged_attention import gather

HEADS, KV_HEADS, DIM, BLOCK, ROWS, TOKENS = 9, 3, 64, 16, 16, 600
NUM_BLOCKS = ROWS * -(-TOKENS // BLOCK) + 8


def setup():
    torch.set_num_threads(1)  # one thread: less sensitive to the other processes of a shared machine
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(NUM_BLOCKS, BLOCK, KV_HEADS, DIM, generator=gen)  # token-major
    head_major = pool.transpose(1, 2).contiguous()  # [blocks, kv_heads, bs, dim]: the layout before
    order = torch.randperm(NUM_BLOCKS, generator=gen)
    per_row = -(-TOKENS // BLOCK)
    tables = order[: ROWS * per_row].view(ROWS, per_row)
    lengths = torch.randint(TOKENS - 100, TOKENS + 1, (ROWS,), generator=gen)
    mask = (torch.arange(per_row * BLOCK).unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]
    query = torch.randn(ROWS, HEADS, 1, DIM, generator=gen)
    return pool, head_major, tables, mask, query


def before(pool_hm: torch.Tensor, tables: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    blocks = pool_hm[tables]  # [rows, nb, kv, bs, dim]
    rows, nb, kv, bs, dim = blocks.shape
    k = blocks.transpose(1, 2).reshape(rows, kv, nb * bs, dim)  # the second copy
    k = k[:, :, None].expand(rows, kv, HEADS // kv, nb * bs, dim).reshape(rows, HEADS, nb * bs, dim)  # repeat_kv
    return F.scaled_dot_product_attention(query, k, k, attn_mask=mask)


def after(pool: torch.Tensor, tables: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    k = gather(pool, tables)  # [rows, kv, keys, dim], one copy
    q = query.view(ROWS, KV_HEADS, HEADS // KV_HEADS, DIM)
    return F.scaled_dot_product_attention(q, k, k, attn_mask=mask).view(ROWS, HEADS, 1, DIM)


def test_both_layouts_compute_the_same_attention():
    pool, head_major, tables, mask, query = setup()
    torch.testing.assert_close(after(pool, tables, mask, query), before(head_major, tables, mask, query))


@pytest.mark.parametrize("layout", ["before", "after"])
def test_paged_decode_attention(benchmark, layout):
    pool, head_major, tables, mask, query = setup()
    benchmark.group = "paged decode attention (one layer, 16 x ~600 tokens)"
    if layout == "before":
        benchmark(before, head_major, tables, mask, query)
    else:
        benchmark(after, pool, tables, mask, query)
