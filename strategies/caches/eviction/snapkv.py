"""`snapkv`: at prefill, the last ``window`` prompt tokens vote (their attention, summed and smoothed by a pool)
for which earlier entries to keep; the window itself is always kept (SnapKV, Li et al. 2024). Prefill only."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strategies.caches.eviction.base import EvictionCache, EvictionLayer


@dataclass
class SnapKV(EvictionCache):
    name = "snapkv"
    summary = "evict at prefill by the attention of the last `window` prompt tokens; keep `budget` per head"
    window: int = field(
        default=32, metadata={"help": "last prompt tokens whose attention votes which entries stay; always kept, >= 1"})
    kernel: int = field(default=5, metadata={
        "help": "width of the pooling that smooths the votes (keeps a chosen token's neighbours), odd >= 1"})

    def validate(self) -> None:
        super().validate()
        if self.window < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"window must be >= 1 and kernel an odd number >= 1, got {self.window}, {self.kernel}")

    def protected(self) -> int:
        return self.window

    def score(self, layer: EvictionLayer, attention, prefill: bool) -> torch.Tensor:
        votes = attention(min(self.window, layer.get_seq_length())).sum(2)  # [b, h, entries]
        pooled = torch.nn.functional.avg_pool1d(votes.flatten(0, 1)[:, None], self.kernel, 1, self.kernel // 2)
        return pooled.view_as(votes)
