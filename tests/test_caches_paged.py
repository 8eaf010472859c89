"""paged: the block pool's allocator (ask, then act; reference counts), exact bytes, fragmentation, rollback."""

from __future__ import annotations

import pytest
import torch

from strategies.caches.block_pool import BlockPool, BlockTable, PoolExhausted
from strategies.caches.paged import Paged
from strategies.core.hf_compat import with_cache


def test_pool_allocates_frees_and_shares_blocks():
    pool = BlockPool(num_blocks=4, block_size=2, num_layers=3, kv_heads=2, head_dim=8)
    assert pool.block_bytes == 2 * 3 * 2 * 2 * 8 * 4 and pool.reserved_bytes == 4 * pool.block_bytes
    a = pool.allocate(3)
    assert pool.num_used_blocks == 3 and pool.can_allocate(1) and not pool.can_allocate(2)
    with pytest.raises(PoolExhausted, match="pool has 1 free blocks of 4; asked for 2"):
        pool.allocate(2)
    assert pool.num_free_blocks == 1  # a refused allocation changes nothing
    pool.share(a[:1])  # a second sequence reuses the first block (a shared prefix)
    pool.free(a)
    assert pool.num_free_blocks == 3  # the shared block is still held once
    pool.free(a[:1])
    assert pool.num_free_blocks == 4
    with pytest.raises(ValueError, match="already free"):
        pool.free(a[:1])


def test_several_block_tables_over_one_pool():
    pool = BlockPool(num_blocks=5, block_size=4, num_layers=1, kv_heads=1, head_dim=2)
    first, second = BlockTable(pool), BlockTable(pool)
    first.grow(9)  # 3 blocks
    assert first.table.dtype == torch.int32 and first.table.tolist() == first.ids and len(first.ids) == 3
    assert second.can_hold(8) and not second.can_hold(9)
    second.grow(8)
    assert set(first.ids).isdisjoint(second.ids) and pool.num_free_blocks == 0
    first.shrink(4)
    assert len(first.ids) == 1 and pool.num_free_blocks == 2


def test_paged_bytes_are_blocks_times_block_bytes_plus_table(tiny):
    model, cfg = tiny.model, tiny.model.config
    cache = Paged(block_size=4).new_cache(model, 1, 64)
    ids = torch.randint(0, cfg.vocab_size, (1, 10))
    with torch.inference_mode():
        model(input_ids=ids, **with_cache(model, cache), use_cache=True)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    block_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 4 * head_dim * 4
    assert cache.nbytes() == 3 * block_bytes + 3 * 4  # ceil(10 / 4) blocks + an int32 table of 3 entries
    stats = cache.stats()
    assert stats["blocks_used"] == 3 and stats["fragmentation_slots"] == 2 and stats["block_size"] == 4
    assert stats["pool_bytes_reserved"] == 16 * block_bytes
    cache.crop(-3)  # 7 tokens left: the third block is emptied and given back
    assert cache.nbytes() == 2 * block_bytes + 2 * 4 and cache.pool.num_used_blocks == 2
    assert cache.stats()["fragmentation_slots"] == 1


def test_block_size_is_validated():
    with pytest.raises(ValueError, match="block_size must be in 1..4096, got 0"):
        Paged(block_size=0)


def test_a_lone_sequence_reads_its_blocks_in_place_and_a_fragmented_one_gathers(tiny):
    """Both reads give full's logits; the view path is taken only when the blocks are one consecutive run."""
    from strategies.caches.full import FullCache
    from strategies.caches.paged import PagedCache
    from strategies.core.forward import decode_one_token, prefill
    from strategies.kernels.lean_forward import lean_decoder

    model, cfg = tiny.model, tiny.model.config
    seq = torch.randint(0, cfg.vocab_size, (1, 30))
    lone = Paged(block_size=4).new_cache(model, 1, 30)
    shared = BlockPool(16, 4, cfg.num_hidden_layers, cfg.num_key_value_heads,
                       cfg.hidden_size // cfg.num_attention_heads, layout="head_outer")
    shared.free(list(reversed(shared.allocate(16))))  # freed in reverse: blocks come out 15, 14, ...
    fragmented = PagedCache(cfg.num_hidden_layers, 1, 4, 16, pool=shared)
    full = FullCache().new_cache(model, 1, 30)
    with torch.inference_mode():
        for cache in (lone, fragmented, full):
            prefill(model, cache, seq[:, :10])
        for length in range(11, 30):
            ref = decode_one_token(model, full, seq, length)
            for cache in (lone, fragmented):
                got = decode_one_token(model, cache, seq, length, lean_decoder(model, cache))
                torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        new = torch.zeros(1, cfg.num_key_value_heads, 1, cfg.hidden_size // cfg.num_attention_heads)
        keys, _ = lone.layers[0].update(new, new)
    assert keys.untyped_storage().data_ptr() == lone.pool.keys.untyped_storage().data_ptr()  # a view, no copy
    assert lone.stats()["steps_gathered"] == 0 and lone.stats()["steps_read_in_place"] == 21
    assert fragmented.stats()["steps_read_in_place"] == 0 and fragmented.stats()["steps_gathered"] == 20
    with pytest.raises(ValueError, match="head-outer pool"):
        PagedCache(1, 1, 4, 4, pool=BlockPool(4, 4, 1, 1, 2))
