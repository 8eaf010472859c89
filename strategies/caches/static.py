"""`static`: every K/V in buffers preallocated once to a fixed ``max_len`` (transformers' StaticCache shape).

Unlike ``full``, which sizes its buffers to each request, the reservation does not depend on the request: that is
what makes shapes fixed (CUDA graphs, torch.compile), and it costs the whole reservation, which ``nbytes`` reports.
A request longer than the reservation is refused. Lossless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedModel

from strategies.caches.full import PreallocatedLayer
from strategies.core.base import CacheStrategy, KVCache, num_cache_layers

DEFAULT_MAX_LEN = 4096


@dataclass
class Static(CacheStrategy):
    name = "static"
    lossless = True
    summary = "K/V preallocated once to max_len tokens (0: min(4096, the model's context)), no growth"
    max_len: int = field(default=0, metadata={
        "help": "tokens reserved per sequence, >= 0 (0: min(4096, the model's context)); longer requests refused"})

    def validate(self) -> None:
        if self.max_len < 0:
            raise ValueError(f"max_len must be >= 0 (0: min({DEFAULT_MAX_LEN}, the model's context)), "
                             f"got {self.max_len}")

    def capacity(self, model: PreTrainedModel) -> int:
        config = model.config.get_text_config()
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", DEFAULT_MAX_LEN)
        return self.max_len or min(DEFAULT_MAX_LEN, context)

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> KVCache:
        capacity = self.capacity(model)
        if max_len > capacity:
            raise ValueError(f"static cache holds {capacity} tokens; the request needs {max_len} "
                             f"(raise static.max_len)")
        return KVCache([PreallocatedLayer(capacity) for _ in range(num_cache_layers(model.config))])
