"""A lean one-token decode forward for llama-family models (llama, mistral, qwen2, qwen3), gpt-fast style.

Same weights, same cache objects (it calls each cache layer's ``update``), same math as transformers' forward,
minus its per-call overhead: QKV and gate/up are fused into one matmul each (the module weights become views of
the fused tensors, so no memory is added), and no mask is built (one query attends to every key the cache
returns, exactly what transformers does for a single decode token). Prefill and anything else stay on
transformers' forward. Caches opt in with ``CacheStrategy.lean_decode`` (hooks on attention modules would be
bypassed here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache, PreTrainedModel

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def supports_lean(model: PreTrainedModel) -> bool:
    c = model.config
    return c.model_type in FAMILIES and getattr(c, "hidden_act", "silu") == "silu"


class LeanDecoder:
    """Holds the fused weights of one model; ``step(token, position, cache)`` -> logits [vocab] (fp32)."""

    def __init__(self, model: PreTrainedModel):
        self.model, self.config = model, model.config
        c = model.config
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.window = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None
        self.layers = []
        with torch.no_grad():
            for layer in model.model.layers:
                a, mlp = layer.self_attn, layer.mlp
                qkv = _fuse(a.q_proj, a.k_proj, a.v_proj)
                gate_up = _fuse(mlp.gate_proj, mlp.up_proj)
                self.layers.append((layer, qkv, gate_up))

    def usable_at(self, position: int) -> bool:
        return self.window is None or position < self.window

    @torch.inference_mode()
    def step(self, token: torch.Tensor, position: int, cache: Cache) -> torch.Tensor:
        m = self.model.model
        x = m.embed_tokens(token.view(1, 1))
        cos, sin = m.rotary_emb(x, torch.tensor([[position]], device=x.device))
        hd, nq, nkv = self.head_dim, self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, (layer, (w_qkv, b_qkv), (w_gu, b_gu)) in enumerate(self.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q, k, v = F.linear(h, w_qkv, b_qkv).split([nq, nkv, nkv], -1)
            q, k = q.view(1, 1, -1, hd), k.view(1, 1, -1, hd)
            if hasattr(a, "q_norm"):  # qwen3 normalises each head before RoPE
                q, k = a.q_norm(q), a.k_norm(k)
            q, k = _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin)
            keys, values = cache.layers[i].update(k, v.view(1, 1, -1, hd).transpose(1, 2))
            o = F.scaled_dot_product_attention(q, keys, values, scale=a.scaling, enable_gqa=True)
            x = x + a.o_proj(o.transpose(1, 2).reshape(1, 1, nq))
            gate, up = F.linear(layer.post_attention_layernorm(x), w_gu, b_gu).chunk(2, -1)
            x = x + layer.mlp.down_proj(F.silu(gate) * up)
        return self.model.lm_head(m.norm(x))[0, -1].float()


def _fuse(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several linears sharing an input; the modules keep views into it."""
    weight = torch.cat([lin.weight for lin in linears]).contiguous()
    bias = torch.cat([lin.bias for lin in linears]) if linears[0].bias is not None else None
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(weight[start : start + n], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    return weight, bias


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


def lean_decoder(model: PreTrainedModel, cache: Cache | None) -> LeanDecoder | None:
    """The model's LeanDecoder (built once, kept on the model), or None if the family or the cache is not covered:
    every cache layer must declare ``lean_decode`` (it needs nothing but ``update``)."""
    if cache is None or not supports_lean(model) or not all(getattr(la, "lean_decode", False) for la in cache.layers):
        return None
    if getattr(model, "_kvbench_lean", None) is None:
        model._kvbench_lean = LeanDecoder(model)
    return model._kvbench_lean
