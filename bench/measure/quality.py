"""Quality against the naive reference: greedy agreement, perplexity through the cache path with a paired
bootstrap interval of its delta, KL, and output lengths before EOS."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from bench.workloads.text import quality_text


def agreement(reference: list[list[int]], tokens: list[list[int]]) -> tuple[float, int]:
    """Fraction of positions equal to the reference up to each request's first divergence, and the first
    divergence position over all requests (-1 when every token matches)."""
    matched = total = 0
    first = -1
    for ref, out in zip(reference, tokens):
        n = min(len(ref), len(out))
        k = next((i for i in range(n) if ref[i] != out[i]), n)
        matched += k
        total += len(ref)
        if k < len(ref) and (first < 0 or k < first):
            first = k
    return (matched / total if total else float("nan")), first


def perplexity(logprobs: torch.Tensor, targets: list[int]) -> float:
    """exp of the mean negative log-likelihood of ``targets`` under ``logprobs`` [n, vocab]."""
    idx = torch.tensor(targets, device=logprobs.device).unsqueeze(1)
    return math.exp(-logprobs.gather(1, idx).mean().item())


def mean_kl(reference: torch.Tensor, logprobs: torch.Tensor) -> float:
    """Mean over positions of KL(reference || strategy) of next-token distributions (nats)."""
    kl = (reference.exp() * (reference - logprobs)).sum(-1)
    return kl.mean().item()


# Long workloads (a context of >= 1k tokens) score at least this many continuation tokens: 64 tokens gave ±10%
# swings in Δppl between runs (noise read as gains); the smoke workload keeps its short window.
LONG_CONTEXT = 1024
LONG_WINDOW = 1024
KL_POSITIONS = 128  # the reference keeps full next-token distributions only for these first positions (size)


def scored_window(quality_context: int, quality_tokens: int) -> tuple[int, int]:
    """(context, continuation) tokens the perplexity pass scores: long contexts get the long window."""
    return quality_context, max(quality_tokens, LONG_WINDOW) if quality_context >= LONG_CONTEXT else quality_tokens


def target_logprobs(logprobs: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """log p(target_t) per position [n] (float64: the bootstrap sums a thousand of them)."""
    idx = torch.tensor(targets, device=logprobs.device).unsqueeze(1)
    return logprobs.gather(1, idx).squeeze(1).double().cpu()


def ppl_delta_pct(reference: torch.Tensor, strategy: torch.Tensor) -> float:
    """100 · (ppl − ppl_ref) / ppl_ref from per-token target log-probs: exp(mean of the paired nll differences) − 1."""
    return 100 * math.expm1((reference - strategy).mean().item())


def ppl_delta_ci(reference: torch.Tensor, strategy: torch.Tensor, resamples: int = 2000, block: int = 32,
                 seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of ``ppl_delta_pct``. Paired: a resample draws the same positions for both,
    so the text's own difficulty cancels. Circular moving blocks of ``block`` positions, because neighbouring
    tokens' losses are correlated (an i.i.d. resample of positions would make the interval too narrow)."""
    diff = (reference - strategy).double()
    n = diff.numel()
    if n == 0:
        return math.nan, math.nan
    block = max(1, min(block, n))
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n, (resamples, math.ceil(n / block)), generator=gen)
    idx = ((starts.unsqueeze(-1) + torch.arange(block)) % n).reshape(resamples, -1)[:, :n]
    deltas = 100 * torch.expm1(diff[idx].mean(1))
    lo, hi = torch.quantile(deltas, torch.tensor([0.025, 0.975], dtype=deltas.dtype)).tolist()
    return lo, hi


def tokens_before_eos(tokens: list[list[int]], eos: set[int]) -> list[int]:
    """Per generation, the tokens before the first EOS (all of them when none came: censored at max_new). Only
    generations with EOS allowed can hold one (bench/measure/output_length.py): timed runs ban it."""
    return [next((i for i, t in enumerate(g) if t in eos), len(g)) for g in tokens]


def quality_window(workload: Any, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(context, continuation) ids the perplexity pass scores: a long workload's window is >= 1024 tokens."""
    if not hasattr(workload, "quality_context"):
        return workload.quality_text(tokenizer)
    return quality_text(tokenizer, *scored_window(workload.quality_context, workload.quality_tokens))


def eos_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends a generation: the generation config's (an int or a list) and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    out = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    return out | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
