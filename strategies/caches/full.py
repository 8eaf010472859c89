"""`full`: every K/V kept, in buffers preallocated to the request's length (gpt-fast's cache).

``update`` writes the new positions in place and returns views of the filled part, so no step copies the past.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, KVCache, LengthLayer, num_cache_layers, preallocated


class PreallocatedLayer(LengthLayer):
    lean_decode = True

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len = max_len

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.keys, self.values = preallocated(key_states, value_states, self.max_len)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.max_len:
            raise RuntimeError(f"cache holds {self.max_len} tokens; asked to hold {end}")
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_max_length(self) -> int:
        return self.max_len


@dataclass
class FullCache(CacheStrategy):
    name = "full"
    lossless = True
    summary = "every K/V kept, preallocated to prompt + new tokens, written in place"

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> KVCache:
        return KVCache([PreallocatedLayer(max_len) for _ in range(num_cache_layers(model.config))])
