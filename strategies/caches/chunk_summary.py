"""`chunk-summary`: older tokens mean-pooled chunk by chunk into one summary K/V each; the recent ones kept exact.

The seed's method, kept as a lossy baseline: keys are pooled after RoPE (a mean of differently rotated keys), and
a summary weighs as one token in attention however many it stands for — its perplexity delta shows the cost.

Layout per layer: ``[summaries | exact tokens]`` in one tensor. Pooling is decided at the start of each update,
from the tokens cached *before* it: while at least ``keep_last + chunk`` tokens are exact, the oldest ``chunk``
become one summary. So the tokens of the latest update are always exact and can be rolled back (``crop``) to the
very state of a cache that never saw them; a rollback reaching back before the last pooling raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, KVCache, KVLayer, num_cache_layers


class ChunkSummaryLayer(KVLayer):
    lean_decode = True  # update() alone decides what is attended

    def __init__(self, chunk: int, keep_last: int):
        super().__init__()
        self.chunk, self.keep_last = chunk, keep_last
        self.summaries = 0  # pooled entries at the front
        self.seen = 0  # tokens fed so far
        self.pooled_at = 0  # tokens cached when pooling last happened: no rollback before it

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.keys = key_states.new_empty(b, h, 0, d)
        self.values = value_states.new_empty(b, h, 0, value_states.shape[-1])
        self.is_initialized = True

    def pool_old(self) -> None:
        exact = self.keys.shape[-2] - self.summaries
        n = (exact - self.keep_last) // self.chunk
        if n <= 0:
            return
        s, e = self.summaries, self.summaries + n * self.chunk
        self.keys = torch.cat([self.keys[:, :, :s], mean_chunks(self.keys[:, :, s:e], n), self.keys[:, :, e:]], -2)
        self.values = torch.cat([self.values[:, :, :s], mean_chunks(self.values[:, :, s:e], n),
                                 self.values[:, :, e:]], -2)
        self.summaries += n
        self.pooled_at = self.seen

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.pool_old()
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.seen += key_states.shape[-2]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to drop")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        if self.seen + tokens_to_remove < self.pooled_at:
            raise ValueError(f"cannot roll back {-tokens_to_remove} tokens: tokens before position "
                             f"{self.pooled_at} were already pooled into summaries")
        self.keys, self.values = self.keys[:, :, :tokens_to_remove], self.values[:, :, :tokens_to_remove]
        self.seen += tokens_to_remove

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized, self.summaries, self.seen, self.pooled_at = False, 0, 0, 0


def mean_chunks(x: torch.Tensor, n: int) -> torch.Tensor:
    """[b, h, n * chunk, d] -> [b, h, n, d]: the mean of each consecutive chunk."""
    b, h, _, d = x.shape
    return x.reshape(b, h, n, -1, d).mean(dim=3)


@dataclass
class ChunkSummary(CacheStrategy):
    name = "chunk-summary"
    summary = "older tokens mean-pooled per `chunk` into one K/V, the last `keep_last` (to +chunk) exact"
    chunk: int = field(default=8, metadata={"help": "old tokens mean-pooled into one summary K/V, >= 2"})
    keep_last: int = field(
        default=256, metadata={"help": "most recent tokens kept exact (up to keep_last + chunk before pooling), >= 1"})

    def validate(self) -> None:
        if self.chunk < 2:
            raise ValueError(f"chunk must be >= 2 tokens per summary, got {self.chunk}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> KVCache:
        return KVCache([ChunkSummaryLayer(self.chunk, self.keep_last) for _ in range(num_cache_layers(model.config))])
