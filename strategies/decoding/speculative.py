"""`speculative`: a draft model proposes ``k`` tokens, the target verifies them in one forward (see speculation.py).

Drafts (``draft``): ``layers:N`` (the target's first N layers + final norm + LM head, no extra weights), ``int8``
(the target with int8 linear weights), ``bf16`` (the target's weights in bfloat16) or a model spec sharing the
tokenizer. The draft is built once per target by ``prepare`` (before warm-up), and runs over a preallocated cache of
its own in its own dtype; the target runs over whatever cache strategy this decoder is composed with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.sampling import Sampling
from strategies.decoding.drafts import LoadModel, ModelProposer, PreparedDraft, draft_for, parse_layers, prepare_draft
from strategies.decoding.speculation import SpeculativeDecoder


@dataclass
class Speculative(SpeculativeDecoder):
    name = "speculative"
    summary = "draft model proposes k tokens, target verifies in one forward (draft=layers:N | int8 | bf16 | <model>)"

    draft: str = field(default="layers:8", metadata={
        "help": "draft model: layers:N (the target's first N layers), int8, bf16, or a model spec (same tokenizer)"})
    k: int = field(default=4, metadata={"help": "draft tokens proposed per step, verified in one target forward, >= 1"})
    # built by prepare() (not a parameter): the draft and the target it belongs to
    prepared: PreparedDraft | None = field(default=None, init=False, repr=False, compare=False)

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (draft tokens per step) must be >= 1, got {self.k}")
        if not self.draft:
            raise ValueError("draft must be layers:N, int8, or a model spec sharing the target's tokenizer")
        parse_layers(self.draft)

    def prepare(self, model: PreTrainedModel, load: LoadModel | None = None) -> None:
        super().prepare(model, load)  # the plain step's time, for the predicted speedup
        self.prepared = prepare_draft(self.prepared, model, self.draft, load)

    def proposer(self, model: PreTrainedModel, seq: torch.Tensor, end: int, generator: torch.Generator,
                 banned: list[int], sampling: Sampling) -> ModelProposer:
        draft = draft_for(self.prepared, model, self.name)
        return ModelProposer(draft, seq, end, generator, banned, sampling)
