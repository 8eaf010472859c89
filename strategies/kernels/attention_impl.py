"""`--attn`: the attention implementation a cell runs, for transformers' forward and for our lean decode step alike.

``sdpa`` is what ran before the axis existed: transformers loads llama-family models with
``attn_implementation="sdpa"`` and the lean decode forward calls ``F.scaled_dot_product_attention``. ``eager`` is
transformers' explicit softmax(QKᵀ)V (``eager_attention_forward``): set on the model with
``set_attn_implementation`` and mirrored here for the lean step, so a row never mixes the two. ``flex`` is left
out: on CPU, torch 2.13's flex_attention runs only compiled (uncompiled it is the slow reference loop), and for
one decode query it computes the same softmax as SDPA with a block mask that buys nothing.

Who cannot take a non-default implementation is said by ``attention_unsupported``: the continuous engine runs its
own SDPA over the block pool (strategies/scheduling/paged_attention.py), transformers' continuous batching swaps in
its paged attention, and engine peers (llama.cpp, ONNX Runtime) never run our torch model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import Cache, PreTrainedModel

from strategies.kernels.lean_forward import LeanDecoder, _rope

ATTNS = ("sdpa", "eager")
DEFAULT_ATTN = "sdpa"  # what every cell ran before --attn (bench/key.py keeps it out of old keys)
# decoder name -> why it ignores the model's attention implementation (it brings its own)
OWN_ATTENTION = {
    "continuous": "continuous runs its own SDPA over the paged block pool (strategies/scheduling/paged_attention.py)",
    "hf-continuous": "hf-continuous runs transformers' paged attention of its continuous-batching manager",
}
# Attend(q [1, heads, 1, d], keys, values [1, kv_heads, n, d], scale, mask [1, 1, 1, n] bool or None)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, "torch.Tensor | None"], torch.Tensor]


def attention_unsupported(attn: str, decoder: str, peer: bool) -> str | None:
    """Why ``attn`` cannot run for this decoder (the cell is skipped with it), or None."""
    if attn not in ATTNS:
        return f"unknown attention implementation {attn!r}; allowed: {', '.join(ATTNS)}"
    if attn == DEFAULT_ATTN:
        return None
    if decoder in OWN_ATTENTION:
        return f"attn={attn} cannot apply: {OWN_ATTENTION[decoder]}"
    if peer and not decoder.startswith("hf-"):
        return f"attn={attn} cannot apply: {decoder} runs its own engine's attention, not our torch model's"
    return None


def sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)


def eager(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' eager_attention_forward for one query: K/V repeated per query head, fp32 softmax."""
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, keys.transpose(2, 3)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, values)


KERNELS: dict[str, Attend] = {"sdpa": sdpa, "eager": eager}

# write(layer, k, v) -> (keys, values) the query attends to; mask: which of them it may see (None: all)
Write = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def lean_step(model: PreTrainedModel, token: torch.Tensor, position: torch.Tensor, write: Write, attend: Attend,
              mask: torch.Tensor | None = None, cache: Cache | None = None) -> torch.Tensor:
    """The lean one-token forward of strategies/kernels/lean_forward.py with the attention kernel and the K/V write
    as parameters (the compiled step writes into fixed buffers and masks; the eager step appends through the cache).
    ``token`` [1], ``position`` [1] long; logits [vocab] in fp32. ``cache``'s layers that ``sees_queries`` get
    each layer's query after its attention, as in LeanDecoder.step."""
    m = model.model
    x = m.embed_tokens(token.view(1, 1))
    cos, sin = m.rotary_emb(x, position.view(1, 1))
    for i, layer in enumerate(m.layers):
        kv = cache.layers[i] if cache is not None else None
        seen = kv.attended if kv is not None and kv.sees_queries else None
        x = lean_layer(layer, x, cos, sin, lambda k, v, i=i: write(i, k, v), attend, mask, seen)
    return model.lm_head(m.norm(x))[0, -1].float()


def lean_layer(layer: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               write: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], attend: Attend,
               mask: torch.Tensor | None, seen: Callable[[torch.Tensor, float], None] | None = None) -> torch.Tensor:
    """One decoder layer of the lean step: the hidden state [1, 1, hidden] after it; ``seen(q, scale)`` after the
    attention, for a cache layer that scores with the query."""
    a, mlp = layer.self_attn, layer.mlp
    hd = a.head_dim
    h = layer.input_layernorm(x)
    q, k, v = a.q_proj(h).view(1, 1, -1, hd), a.k_proj(h).view(1, 1, -1, hd), a.v_proj(h)
    if hasattr(a, "q_norm"):  # qwen3 normalises each head before RoPE
        q, k = a.q_norm(q), a.k_norm(k)
    q, k = _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin)
    keys, values = write(k, v.view(1, 1, -1, hd).transpose(1, 2))
    o = attend(q, keys, values, a.scaling, mask)
    if seen is not None:
        seen(q, a.scaling)
    x = x + a.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
    h = layer.post_attention_layernorm(x)
    return x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))


class AttnLeanDecoder(LeanDecoder):
    """The lean decode step with a chosen attention kernel (eager); the cache is driven exactly as LeanDecoder does."""

    def __init__(self, model: PreTrainedModel, attn: str):
        super().__init__(model)
        self.attn = attn

    @torch.inference_mode()
    def step(self, token: torch.Tensor, position: int, cache: Cache) -> torch.Tensor:
        pos = torch.tensor([position], device=token.device)
        return lean_step(self.model, token, pos, lambda i, k, v: cache.layers[i].update(k, v), KERNELS[self.attn],
                         cache=cache)


def set_attention(model: PreTrainedModel, attn: str) -> str:
    """Make ``model`` run ``attn`` in transformers' forward and in our lean step; returns what transformers' forward
    now runs (the row's ``attn``). The default leaves the model as loaded (what ran before --attn existed)."""
    if attn != DEFAULT_ATTN:
        model.set_attn_implementation(attn)
        # lean_forward.lean_decoder() reuses the decoder kept on the model: ours, so the lean path attends the same way
        model._kvbench_lean = AttnLeanDecoder(model, attn)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return str(getattr(config, "_attn_implementation", None) or attn)
