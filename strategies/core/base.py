"""The two strategy interfaces and the cache-layer base every cache strategy builds on.

A *cache strategy* decides how K/V are kept: it builds a transformers ``Cache`` whose layers are ours, so any
model family runs through its own forward unchanged. A *decoding strategy* decides how tokens are produced
over whatever cache it is given. ``speculative+quant-int8`` is the speculative decoder handed quant-int8's
``new_cache``. Strategies never read a clock: they call ``emit`` and the runner timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from strategies.core.forward import score_through_cache
from strategies.core.requests import Emit, Generation, InstantClock, as_requests, serve_one_by_one

# Emit and Generation are defined beside serve_one_by_one (it builds Generations); the rest import them from here.
# new_cache(batch, max_len) -> Cache | None (None: no cache, recompute everything — the naive path).
NewCache = Callable[[int, int], "Cache | None"]


class Unsupported(Exception):
    """A strategy cannot run this model (the cell is reported ``status=skipped`` with this message)."""


class StrategyFailed(Exception):
    """A strategy ran but did not do its job (an eviction that kept everything): the cell is ``status=failed``."""


def storage_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the distinct storages behind ``tensors``: views and aliases are counted once."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class KVLayer(CacheLayerMixin):
    """Base of our per-layer caches: adds exact byte accounting to transformers' layer interface.

    ``crop(n)`` with n < 0 drops the last ``-n`` tokens (rollback for speculative decoding), as transformers does.
    """

    is_sliding = False
    is_croppable = True
    lean_decode = False  # True: the lean decode forward may drive it (update(), plus attended() if sees_queries)
    sees_queries = False  # True: the lean forward hands each one-token step's query to attended() after attention

    def attended(self, query: torch.Tensor, scaling: float) -> None:
        """After a lean one-token step attended over this layer: ``query`` [1, heads, 1, head_dim] (post-RoPE)."""

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this layer holds (data, scales, zero-points, tables)."""
        return [t for t in (self.keys, self.values) if t is not None]

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


class KVCache(Cache):
    """A transformers ``Cache`` made of our layers, with exact byte accounting over all of them."""

    def __init__(self, layers: list[KVLayer]):
        super().__init__(layers=layers)

    def nbytes(self) -> int:
        return storage_bytes(*(t for layer in self.layers for t in layer.tensors()))

    def check(self) -> str | None:
        """None if the cache did its job (an eviction kept no more than its budget...), else why not: a strategy
        that silently stops doing its job makes a failed row, never a number."""
        return None

    def stats(self) -> dict[str, float]:
        """Strategy-specific figures (blocks used, fragmentation...). Merged into the result row."""
        return {}


class LengthLayer(KVLayer):
    """A layer whose tokens fill the first ``length`` slots of storage it keeps: rolling back only moves ``length``
    (the slots past it are overwritten by the next update), so crop and reset cost nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to drop")
        self.length = max(0, self.length + tokens_to_remove)

    def reset(self) -> None:
        self.length = 0


def preallocated(key_states: torch.Tensor, value_states: torch.Tensor, tokens: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised K and V buffers of ``tokens`` slots shaped after the first update's [batch, heads, _, dim]."""
    b, h, _, d = key_states.shape
    opts = dict(dtype=key_states.dtype, device=key_states.device)
    return torch.empty(b, h, tokens, d, **opts), torch.empty(b, h, tokens, value_states.shape[-1], **opts)


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_cache_layers(config: Any) -> int:
    return int(_text_config(config).num_hidden_layers)


def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a model config: one token's K (or V) in a full cache is kv_heads × head_dim
    per layer. Configs without ``num_key_value_heads`` (gpt2) have one KV head per query head; without ``head_dim``,
    heads split the hidden size (transformers' attention modules read them the same way)."""
    c = _text_config(config)
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return int(c.num_hidden_layers), int(kv_heads), int(head_dim)


@dataclass
class Strategy:
    """Parameters are dataclass fields with defaults; ``validate`` raises ValueError naming what is allowed."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "cache" or "decoding"
    lossless: ClassVar[bool] = False  # must reproduce naive greedy tokens exactly
    summary: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check parameter values; override and raise ValueError with the allowed range."""

    def params(self) -> dict[str, Any]:
        # init=False fields are built state (a draft model), not parameters
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


@dataclass
class CacheStrategy(Strategy):
    kind: ClassVar[str] = "cache"
    holds_kv: ClassVar[bool] = True  # False only for naive, which recomputes instead of caching

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> Cache | None:
        raise NotImplementedError

    def supports(self, model: PreTrainedModel) -> str | None:
        """None if this cache works with ``model``, else the reason it does not."""
        return None


@dataclass
class DecodingStrategy(Strategy):
    kind: ClassVar[str] = "decoding"
    takes_cache: ClassVar[bool] = True  # peers that drive transformers' own caches set False
    peer: ClassVar[bool] = False  # a library's own path (transformers): run on the stock model, never repacked
    default_cache: ClassVar[str] = "full"  # the cache a bare decoder name runs over

    def prepare(self, model: PreTrainedModel, load: Callable[[str], PreTrainedModel] | None = None) -> None:
        """Build what this decoder needs for ``model`` (a draft model...) before warm-up, untimed. ``load(spec)``
        loads another model in the target's dtype and device, for drafts named by a model spec."""

    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Any, emit: Emit) -> Generation:
        """Generate exactly ``max_new_tokens`` for each prompt: the new token ids per prompt and the figures of this
        call (acceptance rate, target forwards, which decode forward ran...)."""
        raise NotImplementedError

    def score(
        self, model: PreTrainedModel, new_cache: NewCache, prompt_ids: list[int], continuation_ids: list[int]
    ) -> torch.Tensor:
        """Teacher-forced log-probs [len(continuation), vocab] of each continuation position, read through the cache:
        prefill the prompt, then feed the continuation one token at a time. Decoders whose cache path is the
        plain step path (speculation verifies against the same cache) keep this default."""
        return score_through_cache(model, new_cache, prompt_ids, continuation_ids)

    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list, sampling: Any, emit: Emit,
              clock: Any, cache: CacheStrategy | None = None) -> Generation:
        """Serve a request workload (``strategies.core.requests.Request`` with arrival offsets): tokens per request,
        the figures of the run and the requests refused. The default serves one request after another in arrival
        order; schedulers override it. ``cache`` is the cache strategy itself, for engines that manage their own
        memory (block pools, prefix caching)."""
        return serve_one_by_one(lambda prompts, max_new, emit_one: self.generate(
            model, new_cache, prompts, max_new, sampling, emit_one), requests, emit, clock)


@dataclass
class RequestEngine(DecodingStrategy):
    """A decoder whose one path is ``serve`` (batching and scheduling engines): ``generate`` serves the prompts as
    requests that have all arrived."""

    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Any, emit: Emit) -> Generation:
        return self.serve(model, new_cache, as_requests(prompts, max_new_tokens), sampling, emit, InstantClock())
