"""`mtp`: independent next-k-token heads (multi-token prediction, Gloeckle et al. 2024) drafting a chain, the
simplest trained baseline: head k maps the feature that predicted the last token to the token k places after
it; the chain is verified in one forward (tree.py with a tree of width 1) and rolled back with ``crop``.
Trained by ``kvbench train-heads --kind mtp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strategies.decoding.medusa import head_drafter
from strategies.decoding.tree import Drafter, TreeShape, TreeSpeculator
from strategies.training.heads import Heads
from strategies.training.store import DEFAULT_STEPS


@dataclass
class MTP(TreeSpeculator):
    name = "mtp"
    head_kind = "mtp"
    summary = "K trained next-k-token heads draft a chain, verified in one forward (train-heads --kind mtp)"

    heads: int = field(default=4, metadata={"help": "trained heads = tokens drafted per step, >= 1"})
    steps: int = field(default=DEFAULT_STEPS, metadata={"help": "training steps of the heads to load, >= 1"})

    @property
    def num_heads(self) -> int:
        return self.heads

    def validate(self) -> None:
        if self.heads < 1 or self.steps < 1:
            raise ValueError(f"heads and steps must be >= 1, got heads={self.heads} steps={self.steps}")

    def shape(self) -> TreeShape:
        return TreeShape((1,) * self.heads)

    def drafter(self, heads: Heads) -> Drafter:
        return head_drafter(heads)
