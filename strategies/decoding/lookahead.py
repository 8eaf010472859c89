"""`lookahead`: Jacobi iteration with an n-gram pool (after Fu et al. 2024), simplified to ONE branch per forward.

Every forward verifies a guess of the next tokens with the shared verifier (speculation.py), so the output is
the target's own (greedy: token-exact). The guess is either
- an n-gram from the pool that starts with the last token (the most recent of up to ``guess`` kept per token), or
- the Jacobi window: the target's own predictions at the positions past the last accepted token in the previous
  forward, i.e. one fixed-point (Jacobi) update of the ``window`` future tokens, padded by repeating its last
  token when short.
Every forward's predictions past the accepted prefix are harvested into the pool as ``ngram``-grams: the
trajectory n-grams lookahead decoding collects. The paper runs a 2D lookahead window and several verification
candidates in one forward with a custom attention mask; here lookahead and verification take turns in one
causal forward, which keeps the cache a plain append-then-crop-the-tail cache (any cache strategy works).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.sampling import Sampling
from strategies.decoding.speculation import SpeculativeDecoder


class JacobiProposer:
    def __init__(self, window: int, ngram: int, guess: int):
        self.window, self.ngram = window, ngram
        self.pool: dict[int, deque[tuple[int, ...]]] = defaultdict(lambda: deque(maxlen=guess))
        self.jacobi: list[int] = []  # the target's last predictions for the positions after the sequence

    def propose(self, seq: torch.Tensor, length: int, max_drafts: int) -> tuple[list[int], None]:
        if max_drafts < 1:
            return [], None
        last = int(seq[0, length - 1])
        if self.pool.get(last):
            return list(self.pool[last][-1][:max_drafts]), None
        guess = self.jacobi[: self.window] or [last]
        guess = guess + [guess[-1]] * (self.window - len(guess))
        return guess[:max_drafts], None

    def accepted(self, length: int, predicted: list[int], num_accepted: int) -> None:
        tail = predicted[num_accepted:]  # tail[0] was emitted; the rest are Jacobi updates of the future
        self.jacobi = tail[1:]
        for i in range(len(tail) - self.ngram + 1):
            gram = tuple(tail[i + 1 : i + self.ngram])
            if gram not in self.pool[tail[i]]:
                self.pool[tail[i]].append(gram)


@dataclass
class Lookahead(SpeculativeDecoder):
    name = "lookahead"
    summary = "Jacobi iteration + n-gram pool, one verified guess per forward (simplified Fu et al. 2024)"

    window: int = field(default=5, metadata={"help": "Jacobi window: future tokens guessed per forward, >= 1"})
    ngram: int = field(default=4, metadata={"help": "length of the n-grams harvested into the pool, >= 2"})
    guess: int = field(
        default=5, metadata={"help": "n-grams kept in the pool per starting token (the newest is tried), >= 1"})

    @property
    def k(self) -> int:
        return max(self.window, self.ngram - 1)

    def validate(self) -> None:
        for key, low in (("window", 1), ("ngram", 2), ("guess", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"{key} must be >= {low}, got {getattr(self, key)}")

    def proposer(self, model: PreTrainedModel, seq: torch.Tensor, end: int, generator: torch.Generator,
                 banned: list[int], sampling: Sampling) -> JacobiProposer:
        return JacobiProposer(self.window, self.ngram, self.guess)
