"""`paged`: K/V in fixed-size blocks of a shared pool, addressed through a per-sequence block table (vLLM's layout).

Each layer writes new tokens into ``pool.keys[layer][:, block, offset]`` (a head-outer pool: [kv_heads, blocks,
block_size, head_dim]) and attention reads K/V through the table. Where a sequence's blocks are one
run of consecutive ids (a lone sequence in a fresh pool: the allocator hands blocks out in order) the read is a
view of the pool, no copy, as a paged-attention kernel reads blocks in place; otherwise the blocks are gathered
(one copy per step). ``stats()`` says how many steps read in place. Lossless.

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
        b, q = key_states.shape[0], key_states.shape[-2]
        if b != self.owner.batch:
            raise ValueError(f"paged cache was made for batch {self.owner.batch}, got batch {b}")
        where = self.owner.locate(self.length, self.length + q)
        pool = self.owner.pool
        k_pool, v_pool = pool.keys[self.layer], pool.values[self.layer]  # [kv_heads, num_blocks, block_size, dim]
        where.write(k_pool, key_states)
        where.write(v_pool, value_states)
        self.length = where.end
        return where.read(k_pool), where.read(v_pool)

    def tensors(self) -> list[torch.Tensor]:
        return [t.table for t in self.owner.tables]  # blocks are counted by PagedCache.nbytes


class Slots:
    """Where tokens ``start..end`` of every row go in a head-outer pool, and how to read rows ``0..end`` back;
    worked out once per step (every layer feeds the same tokens)."""

    def __init__(self, tables: list[BlockTable], start: int, end: int, block_size: int, device: torch.device):
        self.start, self.end = start, end
        ids = [t.ids for t in tables]
        self.blocks, first = len(ids[0]), ids[0][0]
        # one row whose blocks are first, first+1, ...: per head, its tokens are contiguous in the pool
        self.run = first if len(ids) == 1 and ids[0] == list(range(first, first + self.blocks)) else None
        # a decode step of one row: plain indices, one slot to copy into
        self.slot = (ids[0][start // block_size], start % block_size) if end - start == 1 and len(ids) == 1 else None
        table = None
        if self.run is None or self.slot is None:
            table = torch.tensor(ids, dtype=torch.long, device=device)  # [b, blocks]
        self.ids = None if self.run is not None else table  # what a gather reads through
        if self.slot is None:
            pos = torch.arange(start, end, device=device)
            self.block, self.offset = table[:, pos // block_size], (pos % block_size).expand(len(ids), -1)

    def write(self, pool: torch.Tensor, states: torch.Tensor) -> None:
        """``states`` [b, kv_heads, end - start, dim] into their slots."""
        if self.slot is not None:
            pool[:, self.slot[0], self.slot[1]] = states[0, :, 0]
        else:
            pool[:, self.block, self.offset] = states.transpose(0, 1)  # [kv_heads, b, tokens, dim]

    def read(self, pool: torch.Tensor) -> torch.Tensor:
        """Rows' tokens ``0..end`` as [b, kv_heads, end, dim]: a view for a single run, else one gather."""
        if self.run is not None:  # laid out as a full cache's [1, kv_heads, end, dim] (per head contiguous)
            return pool[:, self.run : self.run + self.blocks].flatten(1, 2)[:, : self.end].unsqueeze(0)
        return pool[:, self.ids].flatten(2, 3)[:, :, : self.end].transpose(0, 1)


class PagedCache(KVCache):
    """Sequences (one per batch row) with block tables over one pool, shared by all layers.

    Give it ``pool`` to share a pool with other caches; otherwise it makes one of ``num_blocks`` on first use.
    """

    def __init__(self, num_layers: int, batch: int, block_size: int, num_blocks: int, pool: BlockPool | None = None):
        if pool is not None and pool.layout != "head_outer":
            raise ValueError("a paged cache needs a head-outer pool (BlockPool(..., layout='head_outer'))")
        self.block_size, self.num_blocks, self.pool = block_size, num_blocks, pool
        self.tables = [BlockTable(pool) for _ in range(batch)] if pool else []
        self.batch = batch
        self.where: Slots | None = None  # the current step's slots, shared by its layers
        self.reads = {"in_place": 0, "gathered": 0}  # steps (not layers) by how attention read the blocks
        super().__init__([PagedLayer(self, i) for i in range(num_layers)])

    def locate(self, start: int, end: int) -> Slots:
        """The slots of tokens ``start..end``: computed by the step's first layer (which grows the tables)."""
        w = self.where
        if w is None or (w.start, w.end) != (start, end):
            for table in self.tables:
                table.grow(end)
            w = self.where = Slots(self.tables, start, end, self.block_size, self.pool.keys.device)
            self.reads["in_place" if w.run is not None else "gathered"] += 1
        return w

    def ensure_pool(self, key_states: torch.Tensor) -> None:
        if self.pool is None:
            _, heads, _, dim = key_states.shape
            self.pool = BlockPool(self.num_blocks, self.block_size, len(self.layers), heads, dim,
                                  key_states.dtype, key_states.device, layout="head_outer")
            self.tables = [BlockTable(self.pool) for _ in range(self.batch)]

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self.where = None  # tables shrink: a later step at the same positions may get other blocks
        longest = max(layer.length for layer in self.layers)
        for table in self.tables:
            table.shrink(longest)  # emptied blocks go back to the pool

    def release(self) -> None:
        """Give every block back to the pool (a finished sequence)."""
        for layer in self.layers:
            layer.reset()
        self.where = None
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
                "pool_bytes_reserved": self.pool.reserved_bytes,
                "steps_read_in_place": self.reads["in_place"], "steps_gathered": self.reads["gathered"]}


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
