"""One packed forward of many requests over a token-major block pool, attention reading the pool with one copy.

Every running request's new tokens (a decode's one token, a prefill chunk's many) are packed into ONE sequence
``[1, T]`` with per-token positions, so the projections and MLP compute no padding (a padded batch would run a
decode row as long as the longest prompt chunk). Attention cannot be packed the same way — each request sees only
its own keys — so the model's attention is swapped, for this forward only, for ``paged_attention``, which:

- writes the step's new K/V into the pool slots of their blocks (``PackedStep`` is the ``Cache`` whose ``update``
  does that and hands the pool back);
- gathers each row's blocks from a token-major pool (``[blocks, block_size, kv_heads, dim]``): ``pool[table]``
  is the one copy, and its view ``[rows, kv_heads, keys, dim]`` is what SDPA reads (no transpose copy);
- runs grouped-query attention without repeating K/V: the ``groups`` query heads sharing a KV head are folded into
  the query length (``[rows, kv_heads, groups x q, dim]``), as vLLM's decode kernels do;
- batches all decodes in one SDPA call (padded keys masked) and runs each prefill chunk in its own (causal when
  it starts the sequence, masked when it follows cached keys).

The swap is ``model.config._attn_implementation`` set to a registered name inside a ``try/finally``; the step is
handed to the attention function as a forward keyword (no global state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from strategies.caches.block_pool import BlockPool
from strategies.core.base import KVCache, KVLayer
from strategies.core.hf_compat import with_cache

ATTENTION = "kvbench_paged"


class PackedLayer(KVLayer):
    def __init__(self, step: PackedStep, layer: int):
        super().__init__()
        self.step, self.layer = step, layer
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # the pool is the storage

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the packed tokens' K/V ([1, kv_heads, T, dim]) into their pool slots; return the layer's pool."""
        s = self.step
        k_pool, v_pool = s.pool.keys[self.layer], s.pool.values[self.layer]  # [blocks, bs, kv_heads, dim]
        heads, dim = k_pool.shape[-2:]
        k_pool.view(-1, heads, dim).index_copy_(0, s.slots, key_states[0].transpose(0, 1))
        v_pool.view(-1, heads, dim).index_copy_(0, s.slots, value_states[0].transpose(0, 1))
        return k_pool, v_pool

    def get_seq_length(self) -> int:
        return 0  # positions are given explicitly

    def tensors(self) -> list[torch.Tensor]:
        return []


class PackedStep(KVCache):
    """Rows ``(block table, start position, new tokens)`` packed in order into one sequence."""

    def __init__(self, pool: BlockPool, num_layers: int, rows: list[tuple[list[int], int, int]]):
        if pool.layout != "token_major":
            raise ValueError("the packed step needs a token-major pool (BlockPool(..., layout='token_major'))")
        self.pool, device, bs = pool, pool.keys.device, pool.block_size
        positions, slots, offsets = [], [], []
        decodes, prefills = [], []
        for blocks, start, n in rows:
            offsets.append(len(positions))
            span = range(start, start + n)
            positions += span
            slots += [blocks[p // bs] * bs + p % bs for p in span]
            (decodes if n == 1 else prefills).append((len(positions) - n, blocks, start, n))
        self.position_ids = torch.tensor([positions], device=device)
        self.slots = torch.tensor(slots, device=device)
        self.last = torch.tensor([o + n - 1 for o, (_, _, n) in zip(offsets, rows)], device=device)
        self.num_tokens = len(positions)
        self.decode = self.decode_group(decodes, device) if decodes else None
        self.prefills = [(o, torch.tensor(b[: -(-(s + n) // bs)], device=device), s, n) for o, b, s, n in prefills]
        super().__init__([PackedLayer(self, i) for i in range(num_layers)])

    def decode_group(self, decodes: list, device: torch.device):
        """Token indices, padded block tables [rows, blocks] and the key mask [rows, 1, 1, keys] of the decodes."""
        bs = self.pool.block_size
        num_blocks = max(-(-(s + 1) // bs) for _, _, s, _ in decodes)
        tables = [b[:num_blocks] + [b[0]] * (num_blocks - len(b[:num_blocks])) for _, b, _, _ in decodes]
        index = torch.tensor([o for o, _, _, _ in decodes], device=device)
        keys = torch.arange(num_blocks * bs, device=device)
        mask = keys.unsqueeze(0) <= torch.tensor([s for _, _, s, _ in decodes], device=device).unsqueeze(1)
        return index, torch.tensor(tables, device=device), mask[:, None, None, :]


def gather(pool_layer: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """[..., kv_heads, keys, dim] of the blocks ``tables`` [..., blocks], in order: one copy (the index), the rest
    views."""
    blocks = pool_layer[tables]  # [..., blocks, bs, kv_heads, dim]
    *lead, nb, bs, heads, dim = blocks.shape
    return blocks.view(*lead, nb * bs, heads, dim).transpose(-3, -2)


def paged_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                    scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """transformers' attention-function signature; ``key``/``value`` are the layer's pool (from ``update``)."""
    step: PackedStep = kwargs["paged_step"]
    _, heads, _, dim = query.shape
    kv_heads = key.shape[-2]
    groups = heads // kv_heads
    q = query[0].transpose(0, 1)  # [T, heads, dim]
    out = torch.empty(step.num_tokens, heads, dim, dtype=query.dtype, device=query.device)
    if step.decode is not None:
        index, tables, mask = step.decode
        qd = q[index].view(len(index), kv_heads, groups, dim)  # a decode's group of heads as a query length
        o = F.scaled_dot_product_attention(qd, gather(key, tables), gather(value, tables), attn_mask=mask,
                                           scale=scaling)
        out[index] = o.reshape(len(index), heads, dim)
    for offset, table, start, n in step.prefills:
        # Unfolded heads with enable_gqa: SDPA's fused CPU kernel takes this (and skips the masked half when the
        # chunk starts the sequence); the folded form with a [groups x n, keys] mask ran ~4x slower at n ~ 560.
        qp = q[offset : offset + n].transpose(0, 1).unsqueeze(0)  # [1, heads, n, dim]
        num_keys = start + n
        k = gather(key, table)[:, :num_keys].unsqueeze(0)
        v = gather(value, table)[:, :num_keys].unsqueeze(0)
        if start == 0:
            o = F.scaled_dot_product_attention(qp, k, v, is_causal=True, scale=scaling, enable_gqa=True)
        else:  # a later chunk, or after a cached prefix: query i sees keys up to start + i
            causal = (torch.arange(num_keys, device=q.device).unsqueeze(0)
                      <= torch.arange(start, start + n, device=q.device).unsqueeze(1))  # [n, keys]
            o = F.scaled_dot_product_attention(qp, k, v, attn_mask=causal, scale=scaling, enable_gqa=True)
        out[offset : offset + n] = o[0].transpose(0, 1)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTENTION, paged_attention)


def supports_packed(model) -> str | None:
    """Why this model cannot take the packed path (it then runs the padded one), or None."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not hasattr(config, "_attn_implementation"):
        return "no swappable attention implementation"
    if getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None):
        return "sliding-window or soft-capped attention"
    return None


def forward_packed(model, pool: BlockPool, num_layers: int, rows: list[tuple[list[int], list[int], int]],
                   logits_rows: list[int]) -> torch.Tensor:
    """One forward of every row's new tokens ``(block table, token ids, start position)``; the fp32 logits
    [len(logits_rows), vocab] of the last new token of each row in ``logits_rows``."""
    step = PackedStep(pool, num_layers, [(t, s, len(ids)) for t, ids, s in rows])
    input_ids = torch.tensor([[i for _, ids, _ in rows for i in ids]], device=pool.keys.device)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        out = model(input_ids=input_ids, position_ids=step.position_ids, **with_cache(model, step), use_cache=True,
                    logits_to_keep=step.last[logits_rows] if logits_rows else 1, paged_step=step)
    finally:
        config._attn_implementation = before
    return out.logits[0].float() if logits_rows else out.logits[0, :0].float()
