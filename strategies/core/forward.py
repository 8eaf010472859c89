"""The shared forward helpers every decoder uses: one forward over a cache at explicit positions, prefill, one
decode step, and teacher-forced scoring through a cache (the quality path of every strategy)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import Cache, PreTrainedModel

from strategies.core.hf_compat import with_cache
from strategies.kernels.lean_forward import LeanDecoder


def forward_logits(
    model: PreTrainedModel, ids: torch.Tensor, cache: Cache | None, start: int, all_logits: bool = False
) -> torch.Tensor:
    """Run ``ids`` [1, n] at positions start..start+n through ``cache``; logits [n or 1, vocab] in fp32.

    Positions are passed explicitly, so caches that evict tokens keep each token's original position.
    """
    n = ids.shape[1]
    positions = torch.arange(start, start + n, device=ids.device).unsqueeze(0)
    out = model(
        input_ids=ids,
        position_ids=positions,
        **with_cache(model, cache),
        use_cache=cache is not None,
        logits_to_keep=0 if all_logits else 1,
    )
    return out.logits[0].float()


def prefill(model: PreTrainedModel, cache: Cache | None, prompt: torch.Tensor) -> torch.Tensor:
    """Logits [vocab] after the whole prompt."""
    return forward_logits(model, prompt, cache, 0)[-1]


def decode_one_token(
    model: PreTrainedModel, cache: Cache | None, seq: torch.Tensor, length: int, lean: LeanDecoder | None = None
) -> torch.Tensor:
    """Logits [vocab] after feeding token ``seq[length-1]``; without a cache, after the whole ``seq[:length]``.
    With ``lean``, the one-token forward is the lean llama-family path over the same cache."""
    if cache is None:
        return forward_logits(model, seq[:, :length], None, 0)[-1]
    if lean is not None and lean.usable_at(length - 1):
        return lean.step(seq[0, length - 1], length - 1, cache)
    return forward_logits(model, seq[:, length - 1 : length], cache, length - 1)[-1]



@torch.inference_mode()
def score_through_cache(
    model: PreTrainedModel,
    new_cache: Callable[[int, int], Cache | None],
    prompt_ids: list[int],
    continuation_ids: list[int],
) -> torch.Tensor:
    """Teacher-forced log-probs [m, vocab]: prefill the prompt, then feed the continuation one token at a time,
    so every later position reads what the cache kept. Without a cache (naive) recomputation is one forward."""
    device = model.device
    ids = torch.tensor([prompt_ids + continuation_ids], device=device)
    n, m = len(prompt_ids), len(continuation_ids)
    cache = new_cache(1, n + m - 1)
    if cache is None:
        logits = forward_logits(model, ids[:, : n + m - 1], None, 0, all_logits=True)[n - 1 :]
        return logits.log_softmax(-1)
    rows = [prefill(model, cache, ids[:, :n])]
    for t in range(1, m):
        rows.append(decode_one_token(model, cache, ids, n + t))
    return torch.stack(rows).log_softmax(-1)
