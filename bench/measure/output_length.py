"""Output-length inflation (issue #16): how many tokens a strategy generates before EOS, against the reference.

Timed runs ban EOS so every repeat generates ``max_new_tokens``; an EOS-banned output never shows where the
model would have stopped. So this pass generates once more, untimed, with EOS allowed (``EOS_ALLOWED``), through
the strategy's own cache path, over the prompts the reference ran, and counts the tokens before the first EOS.
Compression is known to lengthen outputs (a model that lost context rambles), which raises end-to-end cost beyond
what tok/s shows. The pass runs for the reference and for lossy strategies of ours; a lossless one reproduces the
reference's tokens (checked on every row) and so its lengths, and engine peers choose tokens in their own engine,
where our switch does not reach.
"""

from __future__ import annotations

from typing import Any

from bench.measure.quality import tokens_before_eos
from strategies.core.sampling import EOS_ALLOWED, GREEDY


def generate_with_eos(comp: Any, model: Any, workload: Any, tokenizer: Any, count: int) -> list[list[int]]:
    """``comp``'s greedy tokens for the workload's first ``count`` prompts with EOS allowed (generation still runs
    to ``max_new_tokens``; the lengths are read up to the first EOS)."""
    token = EOS_ALLOWED.set(True)
    try:
        return comp.decoder.generate(model, comp.cache_factory(model), workload.prompts(tokenizer)[:count],
                                     workload.max_new_tokens, GREEDY, lambda i, t: None).tokens
    finally:
        EOS_ALLOWED.reset(token)


def length_columns(tokens: list[list[int]], eos: set[int], reference: list[list[int]] | None) -> dict[str, float]:
    """Mean tokens before EOS (censored at max_new), the share of outputs that reached EOS, and the ratio of the
    total length to the reference's over the same prompts (> 1: this strategy talks longer)."""
    if not tokens:
        return {}
    lengths = tokens_before_eos(tokens, eos)
    out = {"tokens_before_eos": sum(lengths) / len(lengths),
           "eos_rate": sum(n < len(t) for n, t in zip(lengths, tokens)) / len(tokens)}
    if reference and (ref_total := sum(tokens_before_eos(reference[: len(tokens)], eos))):
        out["output_length_ratio"] = sum(lengths) / ref_total
    return out
