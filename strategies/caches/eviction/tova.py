"""`tova`: token omission via attention — at every step drop the entries the newest query attends to least,
averaged over all heads of the layer, so a layer drops the same tokens in every head (TOVA, Oren et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies.caches.eviction.base import EvictionCache, EvictionLayer


@dataclass
class TOVA(EvictionCache):
    name = "tova"
    summary = "keep `budget` entries: those the newest token attends to most (mean over heads), every step"
    evicts_while_decoding = True

    def protected(self) -> int:
        return 1  # the newest token: a rollback drops the last entries, which must be the newest tokens

    def score(self, layer: EvictionLayer, attention, prefill: bool) -> torch.Tensor:
        return attention(1)[:, :, -1].mean(1, keepdim=True)  # [b, 1, entries]
