"""`prompt-lookup`: the draft is what followed the last n-gram's most recent earlier occurrence in the prompt and
the text generated so far (Saxena's prompt lookup decoding), verified like any draft (see speculation.py).

The largest n (``ngram``) is tried first, down to 1. transformers' ``prompt_lookup_num_tokens`` takes the
*leftmost* match; we take the most recent, which follows the text being copied more closely once generation has
started repeating a passage. No match: the step is a plain one-token decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.sampling import Sampling
from strategies.decoding.speculation import SpeculativeDecoder


def lookup(tokens: torch.Tensor, max_ngram: int, max_drafts: int) -> list[int]:
    """Up to ``max_drafts`` tokens that followed the most recent earlier occurrence of the longest suffix n-gram
    (n <= ``max_ngram``) of ``tokens`` [length]."""
    length = tokens.shape[0]
    if max_drafts < 1:
        return []
    for n in range(min(max_ngram, length - 1), 0, -1):
        windows = tokens[: length - 1].unfold(0, n, 1)  # every n-gram that has at least one token after it
        hits = (windows == tokens[length - n :]).all(-1).nonzero().flatten()
        if hits.numel():
            start = int(hits[-1]) + n
            return tokens[start : min(start + max_drafts, length)].tolist()
    return []


class LookupProposer:
    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram

    def propose(self, seq: torch.Tensor, length: int, max_drafts: int) -> tuple[list[int], None]:
        return lookup(seq[0, :length], self.max_ngram, max_drafts), None

    def accepted(self, length: int, predicted: list[int], num_accepted: int) -> None:
        pass


@dataclass
class PromptLookup(SpeculativeDecoder):
    name = "prompt-lookup"
    summary = "n-gram match in prompt + generated text proposes k tokens; target verifies in one forward"

    ngram: int = field(
        default=3, metadata={"help": "longest n-gram looked up in prompt + generated text (tried down to 1), >= 1"})
    k: int = field(default=10, metadata={"help": "most tokens drafted from a match per step, >= 1"})

    def validate(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"ngram (largest n-gram matched) must be >= 1, got {self.ngram}")
        if self.k < 1:
            raise ValueError(f"k (draft tokens per step) must be >= 1, got {self.k}")

    def proposer(self, model: PreTrainedModel, seq: torch.Tensor, end: int, generator: torch.Generator,
                 banned: list[int], sampling: Sampling) -> LookupProposer:
        return LookupProposer(self.ngram)
