"""One forward of several sequences of different lengths over a block pool: the cache view and the mask.

transformers runs its own attention; we hand it a ``Cache`` whose layers write each row's new K/V into the
pool through that row's block table and return every row's K/V gathered into a padded batch
``[rows, kv_heads, max_len, head_dim]``, plus a prepared 4D boolean mask (transformers uses a 4D mask as-is)
that lets query ``i`` of row ``b`` see exactly keys ``0..start_b + i``. Positions are passed per row.
Padding keys read stale (finite) pool slots and get zero weight, so each row computes what it would alone.
"""

from __future__ import annotations

import torch

from strategies.caches.block_pool import BlockPool
from strategies.core.base import KVCache, KVLayer
from strategies.core.hf_compat import with_cache


class PagedBatchLayer(KVLayer):
    def __init__(self, view: PagedBatch, layer: int):
        super().__init__()
        self.view, self.layer = view, layer
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # the pool is the storage

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        v = self.view
        k_pool, v_pool = v.pool.keys[self.layer], v.pool.values[self.layer]  # [blocks, kv_heads, bs, dim]
        new_k = key_states.transpose(1, 2)[v.query_valid]  # [tokens, kv_heads, dim]
        new_v = value_states.transpose(1, 2)[v.query_valid]
        k_pool[v.write_block, :, v.write_offset] = new_k
        v_pool[v.write_block, :, v.write_offset] = new_v
        return v.gather(k_pool), v.gather(v_pool)

    def get_seq_length(self) -> int:
        return 0  # positions and the mask are given explicitly

    def tensors(self) -> list[torch.Tensor]:
        return []


class PagedBatch(KVCache):
    """Rows ``b`` feeding ``lengths[b]`` new tokens at positions ``starts[b]..``, blocks ``tables[b]``."""

    def __init__(self, pool: BlockPool, num_layers: int, tables: list[list[int]], starts: list[int],
                 lengths: list[int]):
        self.pool = pool
        device, bs = pool.keys.device, pool.block_size
        rows, q = len(tables), max(lengths)
        ends = [s + n for s, n in zip(starts, lengths)]
        num_blocks = -(-max(ends) // bs)
        padded = [t[:num_blocks] + [t[0]] * (num_blocks - len(t[:num_blocks])) for t in tables]
        self.block_ids = torch.tensor(padded, dtype=torch.long, device=device)  # [rows, num_blocks]
        self.key_len = num_blocks * bs
        start = torch.tensor(starts, device=device).unsqueeze(1)
        steps = torch.arange(q, device=device).unsqueeze(0)
        self.query_valid = steps < torch.tensor(lengths, device=device).unsqueeze(1)  # [rows, q]
        positions = start + steps
        self.position_ids = torch.where(self.query_valid, positions, start)
        slot = positions[self.query_valid]
        row = torch.arange(rows, device=device).unsqueeze(1).expand(rows, q)[self.query_valid]
        self.write_block = self.block_ids[row, slot // bs]
        self.write_offset = slot % bs
        keys = torch.arange(self.key_len, device=device).view(1, 1, self.key_len)
        self.mask = (keys <= self.position_ids.unsqueeze(-1)).unsqueeze(1)  # [rows, 1, q, key_len]
        super().__init__([PagedBatchLayer(self, i) for i in range(num_layers)])

    def gather(self, pool_layer: torch.Tensor) -> torch.Tensor:
        """[rows, kv_heads, key_len, dim] of every row's blocks, in sequence order."""
        blocks = pool_layer[self.block_ids]  # [rows, num_blocks, kv_heads, bs, dim]
        rows, nb, heads, bs, dim = blocks.shape
        return blocks.transpose(1, 2).reshape(rows, heads, nb * bs, dim)


def forward_rows(model, pool: BlockPool, num_layers: int, rows: list[tuple[list[int], list[int], int]]
                 ) -> torch.Tensor:
    """Run each row's new tokens (``(block table, token ids, start position)``) in one forward; returns the
    fp32 logits [rows, vocab] of each row's last new token."""
    lengths = [len(ids) for _, ids, _ in rows]
    view = PagedBatch(pool, num_layers, [t for t, _, _ in rows], [s for _, _, s in rows], lengths)
    q = max(lengths)
    input_ids = torch.zeros(len(rows), q, dtype=torch.long, device=pool.keys.device)
    for b, (_, ids, _) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids, device=input_ids.device)
    same = len(set(lengths)) == 1  # then only the last position's logits are needed (no vocab-sized waste)
    out = model(input_ids=input_ids, position_ids=view.position_ids, attention_mask=view.mask,
                **with_cache(model, view), use_cache=True, logits_to_keep=1 if same else 0)
    last = torch.tensor([0 if same else n - 1 for n in lengths], device=input_ids.device)
    return out.logits[torch.arange(len(rows)), last].float()
