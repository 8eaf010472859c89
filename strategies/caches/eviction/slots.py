"""Preallocated per-(batch, KV head) rows of cache entries, edited in place so a decode step copies O(1) entries.

Every buffer is [batch, kv_heads, capacity, *trailing] (keys and values [.., head_dim], positions and accumulated
mass [..]); the first ``held`` slots of each row are the kept entries, in no particular order once ``swap_remove``
has run (attention does not depend on entry order: RoPE is in the keys and masks read the positions).
"""

from __future__ import annotations

import torch

Buffers = dict[str, torch.Tensor]


def _rows(index: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """``index`` [b, h, k] broadcast over ``buf``'s trailing dims, for gather/scatter along dim 2."""
    return index.view(*index.shape, *[1] * (buf.dim() - 3)).expand(*index.shape, *buf.shape[3:])


def resized(bufs: Buffers, held: int, capacity: int) -> Buffers:
    """New buffers of ``capacity`` slots holding the first ``held`` slots of ``bufs`` (one copy)."""
    out = {}
    for name, buf in bufs.items():
        new = buf.new_empty(*buf.shape[:2], capacity, *buf.shape[3:])
        new[:, :, :held] = buf[:, :, :held]
        out[name] = new
    return out


def selected(bufs: Buffers, index: torch.Tensor, capacity: int) -> Buffers:
    """New buffers of ``capacity`` slots whose first ``index.shape[-1]`` slots are ``bufs`` at ``index`` [b, h, m]:
    the general (prefill, rollback) path, which allocates fresh tensors so it also works outside inference mode."""
    m = index.shape[-1]
    out = {}
    for name, buf in bufs.items():
        new = buf.new_empty(*buf.shape[:2], capacity, *buf.shape[3:])
        new[:, :, :m] = buf.gather(2, _rows(index, buf))
        out[name] = new
    return out


def lowest(scores: torch.Tensor, positions: torch.Tensor, k: int) -> torch.Tensor:
    """Slots [b, h, k] of the ``k`` lowest ``scores`` [b, h, n] per row (overwritten), ties to the oldest position.

    The topk of the position-ordered layout broke ties however its selection algorithm happened to (CPU topk is
    not stable); slots are no longer in position order, so the tie rule is made explicit and order-independent
    instead. Exact ties of float attention scores do not occur in practice (protected entries are +inf and never
    compete). ``k`` is the handful of entries a step fed, so k passes over the scores cost less than one topk."""
    never = torch.iinfo(positions.dtype).max
    picks = []
    for _ in range(k):
        low = scores.amin(-1, keepdim=True)
        pick = torch.where(scores == low, positions, never).argmin(-1, keepdim=True)
        scores.scatter_(-1, pick, torch.inf)
        picks.append(pick)
    return torch.cat(picks, -1)


def swap_remove_(bufs: Buffers, victims: torch.Tensor, held: int) -> int:
    """Drop the slots ``victims`` [b, h, k] (distinct per row) in place: each victim below the new end is filled
    with a surviving entry from the last ``k`` slots. Copies k entries per row; returns the new ``held``."""
    k = victims.shape[-1]
    end = held - k
    victims = victims.sort(-1).values  # holes (victims below ``end``) first
    tail = torch.arange(end, held, device=victims.device).expand_as(victims)
    tail_is_victim = (tail.unsqueeze(-1) == victims.unsqueeze(-2)).any(-1)
    survivors = torch.where(tail_is_victim, held, tail).sort(-1).values  # one per hole, in the same leading slots
    # a victim already in the tail needs no filling: it "moves" onto itself (distinct targets, no write conflicts)
    sources = torch.where(victims >= end, victims, survivors)
    for buf in bufs.values():
        buf.scatter_(2, _rows(victims, buf), buf.gather(2, _rows(sources, buf)))
    return end
