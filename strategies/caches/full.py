"""`full`: every K/V kept, in buffers preallocated to the request's length (gpt-fast's cache).

``update`` writes the new positions in place and returns views of the filled part, so no step copies the past.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, KVCache, KVLayer, num_cache_layers


class PreallocatedLayer(KVLayer):
    lean_decode = True

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        opts = dict(dtype=key_states.dtype, device=key_states.device)
        self.keys = torch.empty(b, h, self.max_len, d, **opts)
        self.values = torch.empty(b, h, self.max_len, value_states.shape[-1], **opts)
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

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_len

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to drop")
        self.length = max(0, self.length + tokens_to_remove)

    def reset(self) -> None:
        self.length = 0


@dataclass
class FullCache(CacheStrategy):
    name = "full"
    lossless = True
    summary = "every K/V kept, preallocated to prompt + new tokens, written in place"

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> KVCache:
        return KVCache([PreallocatedLayer(max_len) for _ in range(num_cache_layers(model.config))])
