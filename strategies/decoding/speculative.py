"""`speculative`: a draft model proposes ``k`` tokens, the target verifies them in one forward (see speculation.py).

Drafts (``draft``): ``layers:N`` (the target's first N layers + final norm + LM head, no extra weights), ``int8``
(the target with int8 linear weights), ``bf16`` (the target's weights in bfloat16) or a model spec sharing the
tokenizer. The draft is built once per target, on the first (warm-up) call, and runs over a preallocated cache of
its own in its own dtype; the target runs over whatever cache strategy this decoder is composed with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from strategies.core.sampling import Sampling
from strategies.decoding.drafts import ModelProposer, build_draft, parse_layers
from strategies.decoding.speculation import SpeculativeDecoder


@dataclass
class Speculative(SpeculativeDecoder):
    name = "speculative"
    summary = "draft model proposes k tokens, target verifies in one forward (draft=layers:N | int8 | bf16 | <model>)"

    draft: str = "layers:8"
    k: int = 4

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (draft tokens per step) must be >= 1, got {self.k}")
        if not self.draft:
            raise ValueError("draft must be layers:N, int8, or a model spec sharing the target's tokenizer")
        parse_layers(self.draft)

    def prepare(self, model: PreTrainedModel, load=None) -> None:
        built = getattr(self, "_built", None)
        if built is None or built[0] is not model:
            self._built = (model, build_draft(model, self.draft, load))

    def proposer(self, model: PreTrainedModel, seq: torch.Tensor, end: int, generator: torch.Generator,
                 banned: list[int], sampling: Sampling) -> ModelProposer:
        return ModelProposer(self._built[1], seq, end, generator, banned, sampling)
