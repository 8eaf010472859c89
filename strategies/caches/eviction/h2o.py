"""`h2o`: heavy hitters — keep the entries with the most attention accumulated over every query so far, plus the
``window`` most recent tokens; evicts after the prefill and at every decoding step (H2O, Zhang et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strategies.caches.eviction.base import EvictionCache, EvictionLayer


@dataclass
class H2O(EvictionCache):
    name = "h2o"
    summary = "keep `budget` entries per head: most accumulated attention plus the `window` most recent"
    evicts_while_decoding = True
    accumulates = True
    window: int = field(default=16, metadata={"help": "most recent tokens never evicted, >= 0"})

    def validate(self) -> None:
        super().validate()
        if self.window < 0:
            raise ValueError(f"window must be >= 0, got {self.window}")

    def protected(self) -> int:
        return self.window

    def score(self, layer: EvictionLayer, attention, prefill: bool) -> torch.Tensor:
        held = 0 if layer.accumulated is None else layer.accumulated.shape[-1]
        new = layer.get_seq_length() - held
        return layer.accumulate(attention(new).sum(2))  # [b, h, entries]: plus the new queries' attention
