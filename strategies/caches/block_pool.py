"""A pool of fixed-size K/V blocks with a free list and reference counts (nano-vllm's block manager, minus hashing).

One pool serves any number of sequences: each holds a list of block ids (its block table) and reads/writes its
tokens through it. Storage is one tensor per K and V for all layers, ``[layers, num_blocks, kv_heads,
block_size, head_dim]``, reserved up front (a fixed pool, as vLLM reserves GPU memory once); callers ask
``can_allocate`` before ``allocate``, which never changes state when it cannot succeed.

Reference counts let a prefix cache share a block between sequences: ``share`` adds a holder, ``free`` drops
one, and a block returns to the free list when its last holder lets go.

``BlockTable`` is one sequence's view of the pool: the block ids it holds, as a list and as an int32 tensor.

API: ``can_allocate(n)``, ``allocate(n) -> ids``, ``share(ids)``, ``free(ids)``, ``num_free_blocks``,
``num_used_blocks``, ``block_bytes`` (K+V of one block over all layers), ``reserved_bytes``, and the storage
``keys[layer]`` / ``values[layer]``, laid out by ``layout``: ``head_major`` [num_blocks, kv_heads, block_size,
head_dim], ``token_major`` [num_blocks, block_size, kv_heads, head_dim] or ``head_outer`` [kv_heads, num_blocks,
block_size, head_dim].
"""

from __future__ import annotations

from collections import deque

import torch

LAYOUTS = ("head_major", "token_major", "head_outer")


class PoolExhausted(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, num_layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", layout: str = "head_major"):
        """``token_major`` lays each block out [block_size, kv_heads, head_dim]: gathering a row's blocks then yields
        its keys in sequence order as a view (one copy, the gather itself), which is how the continuous engine's
        attention reads the pool. ``head_outer`` puts the KV head outermost: a run of consecutive blocks is then
        each head's tokens contiguous, a view shaped like a full cache (the paged cache reads a lone sequence so)."""
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"a pool needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown pool layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
        self.num_blocks, self.block_size, self.layout = num_blocks, block_size, layout
        shape = {"token_major": (num_layers, num_blocks, block_size, kv_heads, head_dim),
                 "head_major": (num_layers, num_blocks, kv_heads, block_size, head_dim),
                 "head_outer": (num_layers, kv_heads, num_blocks, block_size, head_dim)}[layout]
        self.keys = torch.empty(shape, dtype=dtype, device=device)  # slots are read only after being written
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.ref_counts = [0] * num_blocks
        self.free_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_ids)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block's K and V across all layers."""
        return 2 * self.keys.numel() // self.num_blocks * self.keys.element_size()

    @property
    def reserved_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self.free_ids)

    def allocate(self, num_blocks: int) -> list[int]:
        """``num_blocks`` fresh block ids, each held once. Raises PoolExhausted (changing nothing) if too few."""
        if not self.can_allocate(num_blocks):
            raise PoolExhausted(f"pool has {len(self.free_ids)} free blocks of {self.num_blocks}; "
                                f"asked for {num_blocks}")
        ids = [self.free_ids.popleft() for _ in range(num_blocks)]
        for i in ids:
            self.ref_counts[i] = 1
        return ids

    def share(self, ids: list[int]) -> None:
        """One more holder for each of ``ids`` (a sequence reusing another's prefix blocks)."""
        for i in ids:
            if self.ref_counts[i] < 1:
                raise ValueError(f"block {i} is free; only allocated blocks can be shared")
            self.ref_counts[i] += 1

    def hold(self, ids: list[int]) -> None:
        """One more holder for each of ``ids``, taking free ones back off the free list: a prefix cache reusing
        blocks that no sequence holds any more but that still cache a prefix (added for the prefix cache)."""
        for i in ids:
            if self.ref_counts[i] == 0:
                self.free_ids.remove(i)
            self.ref_counts[i] += 1

    def free(self, ids: list[int]) -> None:
        """Drop one holder of each of ``ids``; blocks nobody holds go back to the free list."""
        for i in ids:
            if self.ref_counts[i] < 1:
                raise ValueError(f"block {i} is already free")
            self.ref_counts[i] -= 1
            if self.ref_counts[i] == 0:
                self.free_ids.append(i)


class BlockTable:
    """One sequence's blocks: ``ids`` in order, and ``table`` (int32 tensor of the same ids) for gathering."""

    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.ids: list[int] = []
        self.table = torch.empty(0, dtype=torch.int32, device=pool.keys.device)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.pool.block_size)

    def can_hold(self, num_tokens: int) -> bool:
        """Whether growing to ``num_tokens`` would fit in the pool (changes nothing)."""
        return self.pool.can_allocate(max(0, self.blocks_for(num_tokens) - len(self.ids)))

    def grow(self, num_tokens: int) -> None:
        """Hold enough blocks for ``num_tokens`` tokens (allocating the missing ones)."""
        missing = self.blocks_for(num_tokens) - len(self.ids)
        if missing > 0:
            self._set(self.ids + self.pool.allocate(missing))

    def shrink(self, num_tokens: int) -> None:
        """Give back the blocks beyond what ``num_tokens`` tokens need."""
        keep = self.blocks_for(num_tokens)
        if keep < len(self.ids):
            self.pool.free(self.ids[keep:])
            self._set(self.ids[:keep])

    def _set(self, ids: list[int]) -> None:
        self.ids = ids
        self.table = torch.tensor(ids, dtype=torch.int32, device=self.table.device)
