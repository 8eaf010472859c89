"""`eagle`: a trained one-block feature-level draft (after Li et al. 2024): from the feature that predicted the
last token and that token's embedding it predicts the next feature, reads it through the target's LM head, and
runs again on its own prediction, ``depth`` times along its best guess; the top ``topk`` at every depth form
the tree (or ``tree`` gives the widths per depth), verified in one forward with a tree mask (tree.py).
Trained by ``kvbench train-heads --kind eagle`` (``--heads`` = the depth it was unrolled over in training).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strategies.decoding.tree import Drafter, TreeShape, TreeSpeculator, parse_widths
from strategies.training.heads import EagleDraft, Heads
from strategies.training.store import DEFAULT_STEPS


def eagle_drafter(draft: EagleDraft) -> Drafter:
    def propose(feature: torch.Tensor, root: int, shape: TreeShape) -> list[int]:
        token = torch.tensor(root, device=feature.device)
        candidates = []
        for width in shape.widths:
            feature = draft.step(feature, token)
            best = draft.project(feature).topk(width).indices
            candidates.append(draft.vocab_ids[best].tolist())
            token = draft.vocab_ids[best[0]]  # the spine: draft on along the best guess
        return shape.tokens(candidates)

    return propose


@dataclass
class Eagle(TreeSpeculator):
    name = "eagle"
    head_kind = "eagle"
    summary = "trained feature-level draft grows a candidate tree, verified in one forward (train-heads --kind eagle)"

    depth: int = field(default=5, metadata={"help": "draft steps per verify (tree depth), >= 1"})
    topk: int = field(default=3, metadata={"help": "candidates kept per depth, >= 1"})
    tree: str = field(default="", metadata={"help": "candidates per depth, e.g. 2/2/1/1 (overrides depth/topk)"})
    heads: int = field(default=4, metadata={"help": "the trained draft to load: the depth it was unrolled over"})
    steps: int = field(default=DEFAULT_STEPS, metadata={"help": "training steps of the draft to load, >= 1"})

    @property
    def num_heads(self) -> int:
        return self.heads

    def validate(self) -> None:
        for key in ("depth", "topk", "heads", "steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.tree:
            parse_widths(self.tree)

    def shape(self) -> TreeShape:
        return TreeShape(parse_widths(self.tree) if self.tree else (self.topk,) * self.depth)

    def drafter(self, heads: Heads) -> Drafter:
        if not isinstance(heads, EagleDraft):
            raise TypeError(f"eagle needs an EagleDraft, got {type(heads).__name__}")
        return eagle_drafter(heads)
