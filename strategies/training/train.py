"""AdamW training of a head set on cached features, and its held-out top-1 agreement with the target.

Only the heads' own weights train: the LM head rows (and EAGLE's token embeddings) are the target's, frozen.
Loss: cross-entropy against the target's own prediction at each offset (over the draft vocabulary; a label
outside it is skipped); EAGLE adds a smooth-L1 regression to the target's next feature and is unrolled over its
depth on its own predicted features, as it drafts (a head trained only on true features drifts by depth 2).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch.nn import functional as F

from strategies.training.data import Features
from strategies.training.heads import EagleDraft, Heads, build_heads

MAX_DRAFT_VOCAB = 8192


@dataclass
class TrainReport:
    kind: str
    num_heads: int
    steps: int
    train_positions: int
    heldout_positions: int
    seconds: float
    final_loss: float
    agreement: list[float] = field(default_factory=list)  # held-out top-1 agreement with the target, per head/depth
    heldout_loss: list[float] = field(default_factory=list)
    heads_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def draft_vocab(features: Features, limit: int = MAX_DRAFT_VOCAB) -> torch.Tensor:
    """The ``limit`` tokens the target predicts most often in the training data, sorted."""
    ids, counts = features.predicted.unique(return_counts=True)
    return ids[counts.argsort(descending=True)[:limit]].sort().values


def _index_in(vocab_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Full-vocabulary id -> draft-vocabulary index (-100: not in it, ignored by cross-entropy)."""
    table = torch.full((vocab_size,), -100, dtype=torch.long)
    table[vocab_ids] = torch.arange(vocab_ids.numel())
    return table


def head_logits(heads: Heads, feats: Features, rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits per offset k = 1..K for positions ``rows`` (all valid for offset K), and the EAGLE feature loss."""
    h = feats.hidden[rows]
    if not isinstance(heads, EagleDraft):
        return list(heads(h)), torch.zeros(())
    out, reg = [], torch.zeros(())
    for k in range(1, heads.num_heads + 1):
        h = heads.step(h, feats.tokens[rows + k])  # the token at t+k, then the feature at t+k
        reg = reg + F.smooth_l1_loss(h, feats.hidden[rows + k])
        out.append(heads.project(h))
    return out, reg


def labels(heads: Heads, feats: Features, rows: torch.Tensor, table: torch.Tensor) -> list[torch.Tensor]:
    """Head k's label at t: the target's prediction from t+k (EAGLE's k-th step reads the feature at t+k too)."""
    return [table[feats.predicted[rows + k]] for k in range(1, heads.num_heads + 1)]


def loss_of(heads: Heads, feats: Features, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    logits, reg = head_logits(heads, feats, rows)
    ce = sum(F.cross_entropy(lg, lb, ignore_index=-100) for lg, lb in zip(logits, labels(heads, feats, rows, table)))
    return ce + reg


@torch.no_grad()
def evaluate(heads: Heads, feats: Features, table: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per head: top-1 agreement with the target's prediction, and cross-entropy (in-vocabulary labels)."""
    rows = feats.valid(heads.num_heads)
    logits, _ = head_logits(heads, feats, rows)
    agree, losses = [], []
    for k, (lg, lb) in enumerate(zip(logits, labels(heads, feats, rows, table)), start=1):
        drafted = heads.vocab_ids[lg.argmax(-1)]
        agree.append(float((drafted == feats.predicted[rows + k]).float().mean()))
        losses.append(float(F.cross_entropy(lg, lb, ignore_index=-100)))
    return agree, losses


def train(model: torch.nn.Module, kind: str, num_heads: int, train_set: Features, heldout: Features, steps: int,
          batch: int = 256, lr: float = 1e-3, seed: int = 0, log=None) -> tuple[Heads, TrainReport]:
    """Train ``num_heads`` heads of ``kind`` for ``steps`` AdamW steps; ``log(step, loss)`` every 25 steps."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    vocab_size = model.get_output_embeddings().weight.shape[0]
    heads = build_heads(kind, train_set.hidden.shape[1], num_heads, draft_vocab(train_set)).attach(model)
    table = _index_in(heads.vocab_ids, vocab_size)
    rows_all = train_set.valid(num_heads)
    if rows_all.numel() == 0:
        raise ValueError(f"no training position has {num_heads} positions after it: give longer text")
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for step in range(steps):
        rows = rows_all[torch.randint(rows_all.numel(), (min(batch, rows_all.numel()),), generator=gen)]
        loss = loss_of(heads, train_set, rows, table)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 25 == 0 or step == steps - 1):
            log(step, float(loss.detach()))
    agreement, heldout_loss = evaluate(heads, heldout, table)
    nbytes = sum(p.numel() * p.element_size() for p in heads.parameters())
    report = TrainReport(kind, num_heads, steps, len(train_set), len(heldout), time.perf_counter() - t0,
                         float(loss.detach()), agreement, heldout_loss, nbytes)
    return heads, report
