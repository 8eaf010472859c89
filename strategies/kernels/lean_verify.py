"""A lean several-token forward for verification (speculative chains, candidate trees), llama family.

The lean decode forward (lean_forward.py) feeds one token; a verify forward feeds the chain and the drafts at
once, under a causal or tree mask. Through transformers' forward that costs ~12 ms more per step on 2 cores than
a plain lean step (module dispatch, mask construction, output objects): on a CPU, where each extra token fed
costs only ~2 ms, that overhead alone eats the gain of about six accepted drafts. Same modules, same cache
``update`` calls and the same math as transformers' SDPA path, so the tokens stay exact (tested against it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Cache, PreTrainedModel

from strategies.kernels.lean_forward import _rope, lean_decoder


def lean_hidden(model: PreTrainedModel, cache: Cache | None, ids: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """Post-norm last hidden states [n, hidden] of ``ids`` [1, n] at ``positions`` [1, n] through ``cache``;
    ``mask`` is additive [1, 1, n, past + n] (None: causal). None when the lean path does not cover this model
    or cache: the caller then runs transformers' forward."""
    lean = lean_decoder(model, cache)
    if lean is not None and any(layer.sees_queries for layer in cache.layers):
        return None  # attended() takes one decode query; several tokens go through transformers and its hooks
    if lean is None or not lean.usable_at(int(positions.max())) or ids.shape[0] != 1:
        return None
    m = model.model
    n = ids.shape[1]
    past = cache.get_seq_length()
    if mask is None:
        allowed = torch.ones(n, past + n, dtype=torch.bool, device=ids.device).tril(past)
        mask = torch.zeros(allowed.shape, dtype=model.dtype, device=ids.device).masked_fill_(
            ~allowed, torch.finfo(model.dtype).min)[None, None]
    x = m.embed_tokens(ids)
    cos, sin = m.rotary_emb(x, positions)
    for i, layer in enumerate(m.layers):
        a, mlp = layer.self_attn, layer.mlp
        hd = a.head_dim
        h = layer.input_layernorm(x)
        q, k, v = a.q_proj(h).view(1, n, -1, hd), a.k_proj(h).view(1, n, -1, hd), a.v_proj(h)
        if hasattr(a, "q_norm"):
            q, k = a.q_norm(q), a.k_norm(k)
        q, k = _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin)
        keys, values = cache.layers[i].update(k, v.view(1, n, -1, hd).transpose(1, 2))
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask.to(q.dtype), scale=a.scaling,
                                           enable_gqa=True)
        x = x + a.o_proj(o.transpose(1, 2).reshape(1, n, -1))
        h = layer.post_attention_layernorm(x)
        x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
    return m.norm(x)[0]
