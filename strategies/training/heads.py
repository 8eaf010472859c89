"""The trained drafters' modules. Every head ends in the target's own (frozen) LM head restricted to a *draft
vocabulary*: the tokens the target predicted in the training data (EAGLE-3 drafts over a reduced vocabulary for
the same reason). On a CPU the full 49k-row LM head costs about a fifth of a target forward; a few thousand rows
cost a fiftieth, so K heads do not eat the speedup they buy. A draft outside that vocabulary is simply never
proposed; verification keeps the output the target's own either way.

- ``medusa``: K residual blocks on the last (post-norm) hidden state h_t; head k proposes token t+1+k.
- ``mtp``: K independent linear maps of h_t (initialised to identity), head k proposes token t+1+k: the
  simplest multi-token-prediction baseline, drafted as a chain.
- ``eagle``: a one-block feature-level draft: (h_t, embedding of token t+1) -> h_{t+1}, then the LM head;
  run autoregressively on its own predicted features. Our block is a residual MLP over the concatenation (no
  self-attention over earlier features: the target's feature already carries the context).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

KINDS = ("medusa", "eagle", "mtp")


def lm_head_weight(model: nn.Module) -> torch.Tensor:
    """The target's LM head as a dense [vocab, hidden] fp32 matrix (a packed head gives its dense values back)."""
    return model.get_output_embeddings().weight.detach().float()


class Heads(nn.Module):
    """Base: ``vocab_ids`` [V'] are the draft vocabulary; ``project`` maps features to logits over it."""

    kind = ""

    def __init__(self, hidden: int, num_heads: int, vocab_ids: torch.Tensor):
        super().__init__()
        self.hidden, self.num_heads = hidden, num_heads
        self.register_buffer("vocab_ids", vocab_ids.long())
        self.lm_rows: torch.Tensor | None = None  # [V', hidden], gathered from the target by ``attach``

    def attach(self, model: nn.Module) -> Heads:
        """Borrow the target's LM head rows of the draft vocabulary (not saved with the heads)."""
        self.lm_rows = lm_head_weight(model)[self.vocab_ids].contiguous()
        return self

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.lm_rows.T

    def settings(self) -> dict[str, int]:
        return {"hidden": self.hidden, "num_heads": self.num_heads, "vocab": int(self.vocab_ids.numel())}


class MedusaHeads(Heads):
    kind = "medusa"

    def __init__(self, hidden: int, num_heads: int, vocab_ids: torch.Tensor):
        super().__init__(hidden, num_heads, vocab_ids)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_heads))
        for block in self.blocks:  # zero: every head starts as the target's own next-token head
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [num_heads, ..., V'] logits of tokens t+2 .. t+1+K."""
        return torch.stack([self.project(h + F.silu(block(h))) for block in self.blocks])


class MTPHeads(Heads):
    kind = "mtp"

    def __init__(self, hidden: int, num_heads: int, vocab_ids: torch.Tensor):
        super().__init__(hidden, num_heads, vocab_ids)
        self.maps = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(num_heads))
        for m in self.maps:
            nn.init.eye_(m.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.project(m(h)) for m in self.maps])


class EagleDraft(Heads):
    """``num_heads`` is the drafting depth it was trained for (training unrolls that many steps)."""

    kind = "eagle"

    def __init__(self, hidden: int, num_heads: int, vocab_ids: torch.Tensor):
        super().__init__(hidden, num_heads, vocab_ids)
        self.fuse = nn.Linear(2 * hidden, hidden)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
        self.embed_rows: torch.Tensor | None = None

    def attach(self, model: nn.Module) -> EagleDraft:
        super().attach(model)
        self.embed_rows = model.get_input_embeddings().weight.detach().float()
        return self

    def step(self, h: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Next feature from the feature h_t [..., hidden] and the token at t+1 [...] (full-vocabulary id)."""
        x = self.fuse(torch.cat([h, self.embed_rows[token]], -1))
        return h + self.mlp(x)


HEAD_CLASSES: dict[str, type[Heads]] = {"medusa": MedusaHeads, "eagle": EagleDraft, "mtp": MTPHeads}


def build_heads(kind: str, hidden: int, num_heads: int, vocab_ids: torch.Tensor) -> Heads:
    if kind not in HEAD_CLASSES:
        raise ValueError(f"unknown head kind {kind!r}; allowed: {', '.join(KINDS)}")
    return HEAD_CLASSES[kind](hidden, num_heads, vocab_ids)
