"""Request workloads: many requests (prompt, max new tokens) plus an arrival process, as vLLM's bench serve.

Arrivals: gaps between requests are gamma-distributed with mean ``1/rate`` and shape ``burstiness``
(coefficient of variation ``1/sqrt(burstiness)``; 1.0 is a Poisson process), seeded; rate ``inf`` puts every
request at t=0. The first request arrives at t=0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from bench.workloads.prompts import COPY_EDIT_PROMPTS
from bench.workloads.text import CHAT_PROMPTS, encode_prompt, prose_tokens, quality_text
from strategies.core.requests import Request

MORE_QUESTIONS = (
    "Which ideas in the text above would a beginner find hardest, and why?",
    "Write a one-line summary of the text above for a changelog.",
    "What example would best illustrate the text above?",
    "Name one function or class the text above describes and say what it returns.",
    "Is there anything in the text above that looks like a warning? Quote it.",
    "Explain the text above to a colleague in two sentences.",
)


def arrival_offsets(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Arrival time (s) of each of ``n`` requests: 0, then cumulative gamma gaps (mean 1/rate, CV 1/√burstiness)."""
    if rate <= 0 or math.isnan(rate):
        raise ValueError(f"--request-rate must be > 0 requests/s (or inf), got {rate}")
    if burstiness <= 0:
        raise ValueError(f"--burstiness must be > 0 (1.0 = Poisson), got {burstiness}")
    if math.isinf(rate):
        return [0.0] * n
    gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(n - 1, 0))
    return [0.0] + np.cumsum(gaps).tolist()


@dataclass(frozen=True)
class RequestWorkload:
    """``build(tokenizer, seed)`` gives the (prompt ids, max new tokens) of every request, arrivals apart."""

    name: str
    description: str
    num_requests: int
    context_tokens: tuple[int, int]  # prose tokens before the question: uniform integer range (inclusive)
    new_tokens: tuple[int, int]  # max new tokens per request: uniform integer range (inclusive)
    shared_context: bool = False  # True: every request shares one context (a long system prompt)
    questions: tuple[str, ...] = CHAT_PROMPTS
    quality_context: int = 64
    quality_tokens: int = 32
    reference_prompts: int | None = None
    is_request_workload = True

    def build(self, tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], int]]:
        """Lengths are drawn from a generator seeded by the workload's name, so every run sees the same requests."""
        rng = np.random.default_rng(sum(map(ord, self.name)))
        out = []
        for i in range(self.num_requests):
            n_ctx = int(rng.integers(self.context_tokens[0], self.context_tokens[1] + 1))
            n_new = int(rng.integers(self.new_tokens[0], self.new_tokens[1] + 1))
            offset = 0 if self.shared_context else 300 * i
            question = self.questions[i % len(self.questions)]
            if i >= len(self.questions):
                question = f"{question} (Request {i}.)"
            text = question if not n_ctx else tokenizer.decode(prose_tokens(tokenizer, offset, n_ctx)) + \
                "\n\n" + question
            out.append((encode_prompt(tokenizer, text), n_new))
        return out

    def requests(self, tokenizer: PreTrainedTokenizerBase, rate: float = math.inf, burstiness: float = 1.0,
                 seed: int = 0) -> list[Request]:
        built = self.build(tokenizer)
        times = arrival_offsets(len(built), rate, burstiness, seed)
        return [Request(i, tuple(p), n, t) for i, ((p, n), t) in enumerate(zip(built, times))]

    # The single-prompt interface (context-length checks in the CLI).
    def prompts(self, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        return [p for p, _ in self.build(tokenizer)]

    @property
    def max_new_tokens(self) -> int:
        return self.new_tokens[1]

    def quality_text(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        return quality_text(tokenizer, self.quality_context, self.quality_tokens)


# The default suite's tasks: chat questions and copy/edit requests alternate, so in one workload prompt lookup has
# text to copy, eviction has something to forget, batching has requests to overlap and prefix caching a system prompt
# to share. (question, prose tokens placed before it, their offset, max new tokens): copying needs the longer output.
ASSISTANT_TASKS = (
    (CHAT_PROMPTS[0], 0, 0, 32),
    (COPY_EDIT_PROMPTS[0], 0, 0, 64),
    (CHAT_PROMPTS[2], 0, 0, 32),
    ("Repeat the text above word for word.", 80, 1000, 64),
    (CHAT_PROMPTS[4], 0, 0, 32),
    (COPY_EDIT_PROMPTS[1], 0, 0, 64),
)
SYSTEM_PROSE = (96, 3000)  # tokens of the shared notes in the system prompt, and their offset in the prose


@dataclass(frozen=True)
class AssistantWorkload(RequestWorkload):
    """Requests to one assistant: a shared system prompt (instructions plus prose notes), then each request's own
    task from ``ASSISTANT_TASKS``."""

    def build(self, tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], int]]:
        notes = tokenizer.decode(prose_tokens(tokenizer, SYSTEM_PROSE[1], SYSTEM_PROSE[0]))
        system = f"You are a careful assistant. Answer briefly. Notes you may use:\n\n{notes}"
        out = []
        for i in range(self.num_requests):
            question, n_ctx, offset, n_new = ASSISTANT_TASKS[i % len(ASSISTANT_TASKS)]
            text = question if not n_ctx else tokenizer.decode(prose_tokens(tokenizer, offset, n_ctx)) + \
                "\n\n" + question
            out.append((encode_prompt(tokenizer, text, system=system), n_new))
        return out


REQUEST_WORKLOADS: dict[str, RequestWorkload] = {
    w.name: w
    for w in (
        RequestWorkload("mixed-chat", "32 chat requests: U[0,192] prose tokens + a question (~40-240 prompt "
                        "tokens), U[16,64] new tokens; arrivals from --request-rate/--burstiness",
                        32, context_tokens=(0, 192), new_tokens=(16, 64)),
        RequestWorkload("shared-prefix", "16 requests sharing one 512-token prose system prompt, each with its own "
                        "question (~90% of prompt tokens shared), 32 new tokens",
                        16, context_tokens=(512, 512), new_tokens=(32, 32), shared_context=True,
                        questions=CHAT_PROMPTS[:4] + MORE_QUESTIONS),
        AssistantWorkload("assistant", "6 requests to one assistant sharing a ~110-token system prompt: chat "
                          "questions (32 new tokens) and copy/edit tasks (64) in turn: the default suite's workload",
                          6, context_tokens=(0, 0), new_tokens=(32, 64), reference_prompts=2),
    )
}
