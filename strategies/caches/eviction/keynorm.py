"""`keynorm`: keep the entries whose keys have the lowest L2 norm — low-norm keys draw the most attention
(Devoto et al. 2024; kvpress's KnormPress). Needs no queries. Prefill only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies.caches.eviction.base import EvictionCache, EvictionLayer


@dataclass
class KeyNorm(EvictionCache):
    name = "keynorm"
    summary = "evict at prefill the entries with the largest key L2 norm; keep `budget` per head"

    def score(self, layer: EvictionLayer, attention, prefill: bool) -> torch.Tensor:
        return -layer.keys.float().norm(dim=-1)
