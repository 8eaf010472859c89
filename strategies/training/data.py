"""Self-distillation data: the target's own hidden states and predictions, computed once and cached.

Medusa-2 and EAGLE train on the target's outputs, not on the text's next tokens: a head is only useful where
it agrees with what the target will say. So every position carries the target's post-norm last hidden state
h_t (the feature its LM head reads) and its greedy prediction for the next token; a head's label at t for
offset k is the target's prediction at t+k. The text is prose (teacher-forced) plus continuations the target
generates itself, so the drafts also see the target's own style of answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Cache, PreTrainedModel

from strategies.core.hf_compat import with_cache

CHUNK = 256  # tokens per forward when collecting features


@dataclass
class Features:
    """One row per position of every sequence, sequences concatenated."""

    hidden: torch.Tensor  # [N, hidden] fp32, the target's post-norm last hidden state
    tokens: torch.Tensor  # [N] the token at the position
    predicted: torch.Tensor  # [N] the target's greedy next-token prediction from the position
    left: torch.Tensor  # [N] positions after this one in the same sequence (offset k is valid iff k <= left)

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def valid(self, k: int) -> torch.Tensor:
        """Indices t that have a position t+k in the same sequence."""
        return (self.left >= k).nonzero().flatten()

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"hidden": self.hidden, "tokens": self.tokens, "predicted": self.predicted, "left": self.left}


def hidden_and_logits(model: PreTrainedModel, ids: torch.Tensor, cache: Cache | None = None, last_only: bool = False,
                      **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The post-norm last hidden states [n, hidden] and fp32 logits [n, vocab] of ``ids`` [1, n] (``last_only``:
    of the last position, [hidden] and [vocab]) through ``cache``; ``kwargs`` go to the base model (positions,
    a 4D mask)."""
    base = model.base_model
    out = base(input_ids=ids, **with_cache(base, cache), use_cache=cache is not None, **kwargs)
    hidden = out.last_hidden_state[0, -1] if last_only else out.last_hidden_state[0]
    return hidden.float(), model.get_output_embeddings()(hidden).float()


@torch.inference_mode()
def collect(model: PreTrainedModel, sequences: list[list[int]]) -> Features:
    """Features of every position of ``sequences`` (each cut into CHUNK-token windows: positions restart at 0)."""
    parts: list[tuple[torch.Tensor, ...]] = []
    for seq in sequences:
        for start in range(0, len(seq), CHUNK):
            ids = torch.tensor([seq[start : start + CHUNK]], device=model.device)
            if ids.shape[1] < 2:
                continue
            hidden, logits = hidden_and_logits(model, ids)
            n = ids.shape[1]
            parts.append((hidden.cpu(), ids[0].cpu(), logits.argmax(-1).cpu(), torch.arange(n - 1, -1, -1)))
    return Features(*(torch.cat([p[i] for p in parts]) for i in range(4)))


def split(features: Features, held_out: int) -> tuple[Features, Features]:
    """(train, held-out): the last ``held_out`` positions are held out; the boundary ends a sequence there."""
    cut = len(features) - held_out
    train = Features(features.hidden[:cut], features.tokens[:cut], features.predicted[:cut],
                     torch.minimum(features.left[:cut], torch.arange(cut - 1, -1, -1)))
    test = Features(features.hidden[cut:], features.tokens[cut:], features.predicted[cut:], features.left[cut:])
    return train, test
