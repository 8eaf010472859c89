"""`sliding-window` and `sinks` (StreamingLLM): keep the first ``sinks`` tokens and the ``window`` most recent.

What attention sees: a decode step attends to the sink tokens, the ``window`` most recent past tokens and itself.
A chunk of several tokens (the prefill) attends to what was kept before it plus itself, causally — so the prefill
of a prompt is exact, and the window applies from the first decode step on. Keys keep the RoPE of their original
positions (they are cached after rotation and never re-rotated); the decode loop passes the true position ids.

Storage is preallocated once and never grows: sink slots, then a ring of ``window + 1 + reserve`` slots (``+1``:
a step writes its token before the oldest one leaves). The ``reserve`` older tokens are never attended: they are
kept so that rolling back up to ``reserve + 1`` tokens (speculative decoding's rejected drafts) gives exactly the
state of a cache that never saw them; a deeper rollback raises. Bytes: (sinks + window + 1 + reserve) tokens,
whatever the sequence length (fewer when the request is shorter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, KVCache, KVLayer, num_cache_layers, preallocated


class WindowLayer(KVLayer):
    lean_decode = True  # update() alone decides what is attended

    def __init__(self, window: int, sinks: int, reserve: int, max_len: int):
        super().__init__()
        self.window, self.sinks, self.reserve = window, sinks, reserve
        self.ring = window + 1 + reserve
        self.capacity = max(1, min(max_len, sinks + self.ring))
        self.seen = 0  # tokens fed so far: the next token's position
        self.first = sinks  # oldest position (>= sinks) still stored in the ring

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.keys, self.values = preallocated(key_states, value_states, self.capacity)
        self.is_initialized = True

    def slot(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos < self.sinks, pos, self.sinks + (pos - self.sinks) % self.ring)

    def attended(self, seen: int, with_next: bool) -> list[int]:
        """Positions a query at position ``seen`` attends to in the past (and itself if ``with_next``)."""
        recent = range(max(self.sinks, seen - self.window), seen + with_next)
        return list(range(min(seen, self.sinks))) + list(recent)

    def read(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V at ``positions`` in any order (every past position is visible to every query)."""
        if len(positions) == self.capacity:
            return self.keys, self.values
        if not positions or positions[-1] == len(positions) - 1 < self.sinks + self.ring:
            return self.keys[:, :, : len(positions)], self.values[:, :, : len(positions)]  # slots = positions
        slots = self.slot(torch.tensor(positions, device=self.keys.device))
        return self.keys.index_select(2, slots), self.values.index_select(2, slots)

    def write(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        start, q = self.seen, key_states.shape[-2]
        pos = torch.arange(start, start + q, device=key_states.device)
        kept = (pos < self.sinks) | (pos >= start + q - self.ring)  # a long chunk keeps only what the ring holds
        slots = self.slot(pos[kept])
        self.keys[:, :, slots] = key_states[:, :, kept]
        self.values[:, :, slots] = value_states[:, :, kept]
        self.seen = start + q
        self.first = max(self.first, self.seen - self.ring)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[-2] == 1:
            positions = self.attended(self.seen, with_next=True)
            self.write(key_states, value_states)
            return self.read(positions)
        past = self.attended(self.seen, with_next=False)
        past_k, past_v = self.read(past)
        self.write(key_states, value_states)
        if not past:
            return key_states, value_states
        return torch.cat([past_k, key_states], dim=-2), torch.cat([past_v, value_states], dim=-2)

    def get_seq_length(self) -> int:
        return len(self.attended(self.seen, with_next=False))

    def get_max_length(self) -> int:
        return self.capacity

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to drop")
        seen = max(0, self.seen + tokens_to_remove)
        if seen > self.sinks and max(self.sinks, seen - self.window) < self.first:
            raise ValueError(f"cannot roll back {-tokens_to_remove} tokens: the window of the new last token was "
                             f"already dropped (reserve={self.reserve} keeps {self.reserve + 1}; raise reserve)")
        self.seen = seen
        if seen <= self.sinks:
            self.first = self.sinks

    def reset(self) -> None:
        self.seen, self.first = 0, self.sinks


def window_cache(model: PreTrainedModel, window: int, sinks: int, reserve: int, max_len: int) -> KVCache:
    return KVCache([WindowLayer(window, sinks, reserve, max_len) for _ in range(num_cache_layers(model.config))])


WINDOW_HELP = {"help": "most recent past tokens a decode step attends to, >= 1"}
RESERVE_HELP = {"help": "older tokens kept but never attended, so a rollback of up to reserve+1 tokens is exact, >= 0"}


def check(window: int, sinks: int, reserve: int, min_sinks: int) -> None:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if sinks < min_sinks:
        raise ValueError(f"sinks must be >= {min_sinks}, got {sinks}")
    if reserve < 0:
        raise ValueError(f"reserve must be >= 0 (tokens kept for rollback), got {reserve}")


@dataclass
class SlidingWindow(CacheStrategy):
    name = "sliding-window"
    summary = "the last `window` tokens (+`reserve` for rollback); prefill exact, decode sees the window"
    window: int = field(default=256, metadata=WINDOW_HELP)
    reserve: int = field(default=8, metadata=RESERVE_HELP)

    def validate(self) -> None:
        check(self.window, 0, self.reserve, 0)

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> KVCache:
        return window_cache(model, self.window, 0, self.reserve, max_len)


@dataclass
class Sinks(CacheStrategy):
    name = "sinks"
    summary = "StreamingLLM: the first `sinks` tokens plus the last `window`, original positions kept"
    sinks: int = field(default=4, metadata={"help": "first tokens always kept and attended (attention sinks), >= 1"})
    window: int = field(default=256, metadata=WINDOW_HELP)
    reserve: int = field(default=8, metadata=RESERVE_HELP)

    def validate(self) -> None:
        check(self.window, self.sinks, self.reserve, 1)

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> KVCache:
        return window_cache(model, self.window, self.sinks, self.reserve, max_len)
