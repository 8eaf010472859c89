"""Token selection shared by every decoder: greedy, or seeded sampling with the usual filters."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy (argmax); the filters apply only when sampling, the repetition penalty always."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"sampling top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"sampling min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"sampling repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def parse(cls, text: str) -> Sampling:
        """'temperature=0.7,top_p=0.9' -> Sampling; unknown keys name the allowed ones."""
        allowed = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, float | int] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, _, value = item.partition("=")
            if key not in allowed:
                raise ValueError(f"unknown sampling option {key!r}; allowed: {', '.join(allowed)}")
            kwargs[key] = int(value) if key in ("top_k", "seed") else float(value)
        return cls(**kwargs)

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def penalize(self, logits: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """Repetition penalty (CTRL's rule, as transformers applies it, greedy included): every id seen in
        ``history`` [..., n] has its logit divided by the penalty if positive, multiplied if negative."""
        if self.repetition_penalty == 1.0 or history is None or not history.numel():
            return logits
        history = history.reshape(*logits.shape[:-1], -1)
        seen = logits.gather(-1, history)
        seen = torch.where(seen < 0, seen * self.repetition_penalty, seen / self.repetition_penalty)
        return logits.scatter(-1, history, seen)

    def filtered_logits(self, logits: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """Logits after repetition penalty, temperature, top-k, top-p, min-p (filtered ids at -inf), in the order
        and with the tie rules of transformers' processors in ``generate``."""
        logits = self.penalize(logits.float(), history) / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:  # drop the low tail holding at most 1 - top_p of the mass; the top id always stays
            ascending, order = torch.sort(logits, descending=False)
            drop = ascending.softmax(-1).cumsum(-1) <= 1 - self.top_p
            drop[..., -1:] = False
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        if self.min_p > 0:  # drop ids less likely than min_p times the most likely one
            probs = logits.softmax(-1)
            logits = logits.masked_fill(probs < self.min_p * probs.amax(-1, keepdim=True), float("-inf"))
        return logits

    def probs(self, logits: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """The filtered next-token distribution [..., vocab] that sampling draws from (temperature > 0)."""
        return self.filtered_logits(logits, history).softmax(-1)

    def distribution(
        self, logits: torch.Tensor, history: torch.Tensor | None = None, banned: list[int] | None = None
    ) -> torch.Tensor:
        """What ``select`` draws from, as probabilities [..., vocab]: one-hot on the argmax under greedy.
        Speculative verification compares these for the target and the draft."""
        logits = ban(logits, banned)
        if self.is_greedy:
            best = self.penalize(logits.float(), history).argmax(-1, keepdim=True)
            return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, best, 1.0)
        return self.probs(logits, history)

    def select(
        self,
        logits: torch.Tensor,
        history: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        banned: list[int] | None = None,
    ) -> torch.Tensor:
        """Next token ids [...] from logits [..., vocab]; ``banned`` ids (EOS, so every run has the same length)
        are never chosen, as transformers' min_new_tokens does."""
        logits = ban(logits, banned)
        if self.is_greedy:
            return self.penalize(logits, history).argmax(-1)
        return draw(self.probs(logits, history), generator)


def ban(logits: torch.Tensor, banned: list[int] | None) -> torch.Tensor:
    if not banned:
        return logits
    logits = logits.clone()
    logits[..., banned] = float("-inf")
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample per row of ``probs`` [..., vocab] (torch.multinomial, as transformers' sampling does)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


GREEDY = Sampling()


# Set only by the untimed output-length pass (bench/measure/output_length.py): our decoders then may choose EOS.
EOS_ALLOWED: ContextVar[bool] = ContextVar("kvbench_eos_allowed", default=False)


def eos_ids(model) -> list[int]:
    """The ids that would end generation; suppressed so a timed run always has max_new_tokens (none while
    ``EOS_ALLOWED`` is set)."""
    if EOS_ALLOWED.get():
        return []
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = model.config.eos_token_id
    return [ids] if isinstance(ids, int) else list(ids or [])
