"""`paged`: K/V in fixed-size blocks of a shared pool, addressed through a per-sequence block table (vLLM's layout).

Each layer writes new tokens into ``pool.keys[layer][block, :, offset]`` and attention reads K/V gathered
through the table (one copy per step, as a paged-attention kernel reads scattered blocks). Lossless.

Bytes: ``nbytes`` counts what the sequences hold — distinct blocks in use × block bytes (K and V of every layer)
plus the int32 block tables — not the pool's reservation, which ``stats()`` reports as ``pool_bytes_reserved``
(here the pool is sized to the request, so it is the same order; a server sizes one pool for many sequences).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.caches.block_pool import BlockPool, BlockTable
from strategies.core.base import CacheStrategy, KVCache, LengthLayer, num_cache_layers


class PagedLayer(LengthLayer):
    lean_decode = True  # update() alone decides what is attended

    def __init__(self, owner: PagedCache, layer: int):
        super().__init__()
        self.owner, self.layer = owner, layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.owner.ensure_pool(key_states)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        pool, tables = self.owner.pool, self.owner.tables
        b, q = key_states.shape[0], key_states.shape[-2]
        if b != len(tables):
            raise ValueError(f"paged cache was made for batch {len(tables)}, got batch {b}")
        start, end = self.length, self.length + q
        for table in tables:
            table.grow(end)  # no-op for every layer after the first
        pos = torch.arange(start, end, device=key_states.device)
        ids = torch.stack([t.table for t in tables]).long()  # [b, blocks]
        block, offset = ids[:, pos // pool.block_size], (pos % pool.block_size).expand(b, q)
        k_pool, v_pool = pool.keys[self.layer], pool.values[self.layer]  # [num_blocks, kv_heads, block_size, dim]
        k_pool[block, :, offset] = key_states.transpose(1, 2)
        v_pool[block, :, offset] = value_states.transpose(1, 2)
        self.length = end
        return gather(k_pool, ids, end), gather(v_pool, ids, end)

    def tensors(self) -> list[torch.Tensor]:
        return [t.table for t in self.owner.tables]  # blocks are counted by PagedCache.nbytes


def gather(pool: torch.Tensor, ids: torch.Tensor, length: int) -> torch.Tensor:
    """[b, kv_heads, length, dim] read through block ids [b, blocks] from a pool [num_blocks, kv_heads, bs, dim]."""
    by_head = pool.transpose(0, 1)  # [kv_heads, num_blocks, bs, dim], a view
    rows = [by_head[:, row].flatten(1, 2)[:, :length] for row in ids]  # one copy per row
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


class PagedCache(KVCache):
    """Sequences (one per batch row) with block tables over one pool, shared by all layers.

    Give it ``pool`` to share a pool with other caches; otherwise it makes one of ``num_blocks`` on first use.
    """

    def __init__(self, num_layers: int, batch: int, block_size: int, num_blocks: int, pool: BlockPool | None = None):
        self.block_size, self.num_blocks, self.pool = block_size, num_blocks, pool
        self.tables = [BlockTable(pool) for _ in range(batch)] if pool else []
        self.batch = batch
        super().__init__([PagedLayer(self, i) for i in range(num_layers)])

    def ensure_pool(self, key_states: torch.Tensor) -> None:
        if self.pool is None:
            _, heads, _, dim = key_states.shape
            self.pool = BlockPool(self.num_blocks, self.block_size, len(self.layers), heads, dim,
                                  key_states.dtype, key_states.device)
            self.tables = [BlockTable(self.pool) for _ in range(self.batch)]

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        longest = max(layer.length for layer in self.layers)
        for table in self.tables:
            table.shrink(longest)  # emptied blocks go back to the pool

    def release(self) -> None:
        """Give every block back to the pool (a finished sequence)."""
        for layer in self.layers:
            layer.reset()
        for table in self.tables:
            table.shrink(0)

    def blocks_used(self) -> int:
        return len({i for t in self.tables for i in t.ids})

    def nbytes(self) -> int:
        if self.pool is None:
            return 0
        return self.blocks_used() * self.pool.block_bytes + sum(t.table.nbytes for t in self.tables)

    def stats(self) -> dict[str, float]:
        if self.pool is None:
            return {}
        tokens = max(layer.length for layer in self.layers)
        slots = sum(len(t.ids) for t in self.tables) * self.block_size
        return {"blocks_used": self.blocks_used(), "block_size": self.block_size,
                "fragmentation_slots": slots - tokens * len(self.tables),
                "pool_bytes_reserved": self.pool.reserved_bytes}


@dataclass
class Paged(CacheStrategy):
    name = "paged"
    lossless = True
    summary = "blocks of block_size tokens in a shared pool, read through a per-sequence block table"
    block_size: int = field(default=16, metadata={"help": "tokens per K/V block, 1..4096"})

    def validate(self) -> None:
        if not 1 <= self.block_size <= 4096:
            raise ValueError(f"block_size must be in 1..4096, got {self.block_size}")

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> PagedCache:
        blocks_per_sequence = -(-max_len // self.block_size)
        return PagedCache(num_cache_layers(model.config), batch, self.block_size, batch * blocks_per_sequence)
