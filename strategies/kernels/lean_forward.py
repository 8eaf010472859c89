"""A lean one-token decode forward for llama-family models (llama, mistral, qwen2, qwen3), gpt-fast style.

Same modules, same cache objects (it calls each cache layer's ``update``), same math as transformers' forward,
minus its per-call overhead: no mask is built (one query attends to every key the cache returns, exactly what
transformers does for a single decode token), no output objects, no per-module dispatch beyond the linears.
Fusing QKV and gate/up into one matmul each was tried and dropped: it needed a second copy of every layer's
weights while loading, and did not pay (fused lean decode 64.2 ms/token against generate's 64.3, stock fp32).
Prefill and anything else stay on transformers' forward. Cache layers opt in with ``KVLayer.lean_decode``; hooks
on attention modules are bypassed here, so a layer that needs the query (eviction scores) sets ``sees_queries``
and gets it in ``attended`` after the step's attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Cache, PreTrainedModel

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def supports_lean(model: PreTrainedModel) -> bool:
    c = model.config
    return c.model_type in FAMILIES and getattr(c, "hidden_act", "silu") == "silu"


class LeanDecoder:
    """The one-token forward of one model; ``step(token, position, cache)`` -> logits [vocab] (fp32)."""

    def __init__(self, model: PreTrainedModel):
        self.model, self.config = model, model.config
        c = model.config
        self.window = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None

    def usable_at(self, position: int) -> bool:
        return self.window is None or position < self.window

    @torch.inference_mode()
    def step(self, token: torch.Tensor, position: int, cache: Cache) -> torch.Tensor:
        m = self.model.model
        x = m.embed_tokens(token.view(1, 1))
        cos, sin = m.rotary_emb(x, torch.tensor([[position]], device=x.device))
        for i, layer in enumerate(m.layers):
            a, mlp = layer.self_attn, layer.mlp
            hd = a.head_dim  # the attention module's own (no second reading of the config to disagree with it)
            h = layer.input_layernorm(x)
            q, k, v = a.q_proj(h).view(1, 1, -1, hd), a.k_proj(h).view(1, 1, -1, hd), a.v_proj(h)
            if hasattr(a, "q_norm"):  # qwen3 normalises each head before RoPE
                q, k = a.q_norm(q), a.k_norm(k)
            q, k = _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin)
            kv = cache.layers[i]
            keys, values = kv.update(k, v.view(1, 1, -1, hd).transpose(1, 2))
            o = F.scaled_dot_product_attention(q, keys, values, scale=a.scaling, enable_gqa=True)
            if kv.sees_queries:  # eviction scores: the query is at hand here, no hook has to recompute it
                kv.attended(q, a.scaling)
            x = x + a.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            h = layer.post_attention_layernorm(x)
            x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        return self.model.lm_head(m.norm(x))[0, -1].float()


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


def lean_decoder(model: PreTrainedModel, cache: Cache | None) -> LeanDecoder | None:
    """The model's LeanDecoder (built once, kept on the model), or None if the family or the cache is not covered:
    every cache layer must declare ``lean_decode``."""
    if cache is None or not supports_lean(model) or not all(getattr(la, "lean_decode", False) for la in cache.layers):
        return None
    lean = getattr(model, "_kvbench_lean", None)
    if lean is None or lean.model is not model:  # a draft built as a view or copy of the target has its own
        lean = model._kvbench_lean = LeanDecoder(model)
    return lean
