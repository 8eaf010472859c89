"""`naive`: no cache at all; every step runs the model over the whole sequence so far (the O(n²) reference)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy


@dataclass
class NoCache(CacheStrategy):
    name = "naive"
    lossless = True
    holds_kv = False
    summary = "no KV cache: recompute the whole sequence for every token (the reference)"

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> None:
        return None
