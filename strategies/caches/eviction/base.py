"""Score-based eviction (kvpress's shape): this base decides *when* to evict and keeps the books; a leaf
(`snapkv`, `h2o`, `tova`, `keynorm`) only says how much each cached entry is worth.

After the prefill forward (which attends over the whole prompt) each layer keeps its ``budget`` best entries per KV
head; leaves with ``evicts_while_decoding`` then keep the cache at ``budget`` after every step. Kept entries keep
their original position ids (the decode loop passes positions explicitly, so RoPE stays right; nothing is
renumbered), while ``get_seq_length()`` counts entries, the index space of attention masks.

Attention scores need the queries, which a cache ``update`` never sees. The cache registers a forward hook on every
attention module that recomputes only the queries it needs (the last ``window`` at prefill, one per step) from the
module's input, after the module ran. Hooks live as long as the cache: they are removed when the cache is released
(``weakref.finalize``), on ``close()``, or on leaving ``with cache:``; a hook also ignores forwards over other caches.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import rotate_half

from strategies.core.base import CacheStrategy, KVCache, KVLayer, num_cache_layers
from strategies.core.hf_compat import TESTED_TRANSFORMERS, cache_in


def attention_modules(model: PreTrainedModel) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]


def recompute_queries(module: torch.nn.Module, hidden: torch.Tensor, rope) -> torch.Tensor:
    """Queries [batch, heads, tokens, head_dim] as ``module`` computed them (llama/qwen/mistral and gpt2 shapes)."""
    if hasattr(module, "q_proj"):
        q = module.q_proj(hidden).unflatten(-1, (-1, module.head_dim))
        q = (module.q_norm(q) if hasattr(module, "q_norm") else q).transpose(1, 2)
        if rope is not None:
            cos, sin = (t[:, -hidden.shape[1]:].unsqueeze(1) for t in rope)
            q = q * cos + rotate_half(q) * sin
        return q
    q = module.c_attn(hidden)[..., : module.embed_dim]  # gpt2: fused qkv, absolute positions
    return q.unflatten(-1, (-1, module.head_dim)).transpose(1, 2)


class EvictionLayer(KVLayer):
    def __init__(self, policy: EvictionCache):
        super().__init__()
        self.policy = policy
        self.positions: torch.Tensor | None = None  # [batch, kv_heads, entries] original position ids, int32
        self.accumulated: torch.Tensor | None = None  # [batch, kv_heads, entries] attention mass (h2o)
        self.seen = 0  # tokens fed so far: the next token's position
        self.budget: int | None = None
        self.allowed = 0  # the most entries this layer may hold now; more means eviction did not happen

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        b, h, t, _ = key_states.shape
        new_pos = torch.arange(self.seen, self.seen + t, dtype=torch.int32, device=key_states.device)
        new_pos = new_pos.expand(b, h, t)
        if self.keys is None:  # clone: the new states may be views into a larger projection output
            self.keys, self.values, self.positions = key_states.clone(), value_states.clone(), new_pos.clone()
            self.is_initialized = True
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            self.positions = torch.cat([self.positions, new_pos], dim=-1)
        self.seen += t
        # Prefill holds every entry until its hook evicts; after that only steps that do not evict add entries.
        self.allowed = self.get_seq_length() if self.budget is None else self.allowed + t
        return self.keys, self.values

    def attention(self, queries: torch.Tensor, scaling: float) -> torch.Tensor:
        """Softmax attention [batch, kv_heads, queries, entries] of the last queries (averaged over each KV head's
        query group) over the kept keys, causal in original positions."""
        b, h, n, d = self.keys.shape
        w = queries.shape[2]
        q = queries.unflatten(1, (h, -1)).float()  # [b, h, group, w, d]
        logits = torch.einsum("bhgwd,bhnd->bhgwn", q, self.keys.float()) * scaling
        q_pos = torch.arange(self.seen - w, self.seen, device=q.device)
        future = self.positions[:, :, None, None, :] > q_pos[:, None]  # [b, h, 1, w, n]
        return logits.masked_fill(future, -math.inf).softmax(-1).mean(2)

    def after_attention(self, attention) -> None:
        """Called once the layer's attention module ran: evict down to the budget when the policy says so."""
        prefill = self.budget is None
        n = self.get_seq_length()
        if prefill:
            self.budget = self.policy.resolve_budget(n)
        if not (prefill or self.policy.evicts_while_decoding):
            return
        self.allowed = min(n, self.budget)
        if n <= self.budget:
            if self.policy.accumulates:
                self.policy.score(self, attention, prefill)  # keep the running totals current
            return
        scores = self.policy.score(self, attention, prefill).float().expand(self.positions.shape).clone()
        protect = min(self.policy.protected(), self.budget)
        if protect:
            scores[..., n - protect :] = math.inf
        keep = scores.topk(self.budget, dim=-1).indices.sort(dim=-1).values  # [b, h, budget], in position order
        self._select(keep)

    def _select(self, index: torch.Tensor) -> None:
        expand = index.unsqueeze(-1).expand(*index.shape, self.keys.shape[-1])
        self.keys, self.values = self.keys.gather(2, expand), self.values.gather(2, expand)
        self.positions = self.positions.gather(2, index)
        if self.accumulated is not None:
            self.accumulated = self.accumulated.gather(2, index)

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def crop(self, tokens_to_remove: int) -> None:
        """Roll back: drop the last ``-tokens_to_remove`` kept entries (the newest tokens, always protected)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to drop")
        n = max(0, self.get_seq_length() + tokens_to_remove)
        self.seen += tokens_to_remove
        self.allowed = max(0, self.allowed + tokens_to_remove)
        self.keys, self.values = self.keys[:, :, :n].clone(), self.values[:, :, :n].clone()
        self.positions = self.positions[:, :, :n].clone()
        if self.accumulated is not None:
            self.accumulated = self.accumulated[:, :, :n].clone()

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.keys, self.values, self.positions, self.accumulated) if t is not None]


class EvictionKVCache(KVCache):
    """Our cache plus the attention hooks its scores need; usable as ``with cache:`` to scope the hooks."""

    def __init__(self, layers: list[EvictionLayer], model: PreTrainedModel):
        super().__init__(layers)
        handles, ref = [], weakref.ref(self)

        def hook(module, args, kwargs, output):
            cache = ref()
            if cache is None or cache_in(kwargs) is not cache:
                return
            hidden, rope = (args[0] if args else kwargs["hidden_states"]), kwargs.get("position_embeddings")

            def attention(last: int) -> torch.Tensor:
                queries = recompute_queries(module, hidden[:, -last:], rope)
                return layer.attention(queries, module.scaling)

            layer = cache.layers[module.layer_idx]
            layer.after_attention(attention)

        try:
            for module in attention_modules(model):
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        except BaseException:
            remove_all(handles)
            raise
        self._finalizer = weakref.finalize(self, remove_all, handles)

    def close(self) -> None:
        self._finalizer()

    def check(self) -> str | None:
        for i, layer in enumerate(self.layers):
            if layer.keys is None:
                continue
            held = layer.get_seq_length()
            if layer.budget is None:
                return (f"eviction never ran: the attention hooks did not see this cache (layer {i} holds all {held} "
                        f"entries); this transformers' attention API differs from the tested {TESTED_TRANSFORMERS}")
            limit = layer.budget if layer.policy.evicts_while_decoding else layer.allowed
            if held > limit:
                return f"eviction kept {held} entries in layer {i} where its budget allows {limit}"
        return None

    def __enter__(self) -> EvictionKVCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_all(handles: list) -> None:
    while handles:
        handles.pop().remove()


@dataclass
class EvictionCache(CacheStrategy):
    """``budget``: a fraction of the prompt (< 1) or a number of tokens (>= 1) kept per layer and KV head."""

    evicts_while_decoding: ClassVar[bool] = False
    accumulates: ClassVar[bool] = False  # score() must see every step, not only those that evict
    budget: float = field(default=0.5, metadata={
        "help": "entries kept per layer and KV head: a fraction (0, 1) of the prompt or a whole count of tokens >= 1"})

    def validate(self) -> None:
        if self.budget <= 0 or (self.budget >= 1 and self.budget != int(self.budget)):
            raise ValueError(f"budget must be a fraction in (0, 1) of the prompt or a whole number of tokens >= 1, "
                             f"got {self.budget}")

    def resolve_budget(self, prompt_len: int) -> int:
        return max(1, math.ceil(self.budget * prompt_len)) if self.budget < 1 else int(self.budget)

    def protected(self) -> int:
        """How many of the newest entries are never evicted."""
        return 0

    def score(self, layer: EvictionLayer, attention, prefill: bool) -> torch.Tensor:
        """Worth of each kept entry [batch, kv_heads or 1, entries]; higher is kept. ``attention(w)`` gives the
        last ``w`` queries' attention over the entries."""
        raise NotImplementedError

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> EvictionKVCache:
        return EvictionKVCache([EvictionLayer(self) for _ in range(num_cache_layers(model.config))], model)
