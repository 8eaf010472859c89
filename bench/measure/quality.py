"""Quality against the naive reference: greedy agreement, perplexity through the cache path, KL."""

from __future__ import annotations

import math

import torch


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
