"""The attention hooks score-based eviction needs: a cache ``update`` never sees the queries, so the cache registers
a forward hook on every attention module that recomputes only the queries it needs (the last ``window`` at
prefill, one per step) from the module's input, after the module ran, and hands them to the layer's
``after_attention``. Hooks live as long as the cache (see ``EvictionKVCache``)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import rotate_half

from strategies.core.base import KVCache
from strategies.core.hf_compat import TESTED_TRANSFORMERS, cache_in

if TYPE_CHECKING:
    from strategies.caches.eviction.base import EvictionLayer


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
