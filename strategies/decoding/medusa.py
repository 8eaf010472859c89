"""`medusa`: K trained residual heads on the target's last hidden state propose a tree of candidates (the top
few per head, ``tree``), verified in one forward with a tree attention mask (see tree.py; Cai et al. 2024).

The heads are trained here by ``kvbench train-heads --kind medusa`` (self-distillation, strategies/training/)
and loaded by ``prepare``; a model without them fails its cell with the command that trains them. Head k reads
the feature that predicted the last token and proposes the token k places after it, so drafting costs K small
matrices and no extra target forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strategies.decoding.tree import Drafter, TreeShape, TreeSpeculator, parse_widths, topk_candidates
from strategies.training.heads import Heads
from strategies.training.store import DEFAULT_STEPS

DEFAULT_TREE = (4, 3, 2, 2)


def head_drafter(heads: Heads) -> Drafter:
    """Independent heads (medusa, mtp): every depth's candidates come from one feature, in one call."""

    def draft(feature: torch.Tensor, root: int, shape: TreeShape) -> list[int]:
        logits = heads(feature)[: len(shape.widths)]
        return shape.tokens(topk_candidates(logits, heads.vocab_ids, shape.widths))

    return draft


@dataclass
class Medusa(TreeSpeculator):
    name = "medusa"
    head_kind = "medusa"
    summary = "K trained heads propose a candidate tree, verified in one forward with a tree mask (train-heads)"

    heads: int = field(default=4, metadata={"help": "trained heads (tokens proposed beyond the next), >= 1"})
    tree: str = field(default="", metadata={
        "help": "candidates per depth along the best path, e.g. 2/1/1/1, at most `heads` depths "
                "(default 4/3/2/2 cut or padded with 1s to `heads`)"})
    steps: int = field(default=DEFAULT_STEPS, metadata={"help": "training steps of the heads to load, >= 1"})

    @property
    def num_heads(self) -> int:
        return self.heads

    def validate(self) -> None:
        if self.heads < 1 or self.steps < 1:
            raise ValueError(f"heads and steps must be >= 1, got heads={self.heads} steps={self.steps}")
        if self.tree and len(parse_widths(self.tree)) > self.heads:
            raise ValueError(f"tree {self.tree!r} has more depths than there are heads ({self.heads})")

    def shape(self) -> TreeShape:
        if self.tree:
            return TreeShape(parse_widths(self.tree))
        return TreeShape((DEFAULT_TREE + (1,) * self.heads)[: self.heads])

    def drafter(self, heads: Heads) -> Drafter:
        return head_drafter(heads)
