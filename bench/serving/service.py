"""From a validated OpenAI request to engine tokens and back: prompt ids, limits, sampling, the response cache,
and one request's run as a stream of pieces (new token ids, the text they release, the finish reason).

Both endpoints end here, so completions and chat differ only in how the prompt is built and how pieces are
framed (bench/serving/responses.py). Finish reasons are OpenAI's: ``stop`` (EOS or a stop string) or ``length``.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from bench.serving.cache import CachedResponse, ResponseCache
from bench.serving.metrics import ServerCounters
from bench.serving.schemas import ApiError, ChatRequest, CompletionRequest, GenerationFields
from bench.serving.text import TextStream
from bench.serving.worker import EngineWorker
from strategies.core.sampling import Sampling
from strategies.scheduling.engine import StepOutput


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 0  # 0: the model's context
    max_tokens: int = 4096  # the most new tokens one request may ask for
    context: int = 2048  # the model's context length: prompt + new tokens must fit

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_tokens", "context"):
            if getattr(self, key) < 1:
                raise ValueError(f"server limit {key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class Job:
    """One admitted request, ready for the engine."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    sampling: Sampling | None
    stop_on_eos: bool
    stops: list[str]
    cache_key: tuple | None


@dataclass
class Piece:
    tokens: list[int]
    text: str
    finish_reason: str | None = None


@dataclass
class Outcome:
    """What a finished run produced (filled while it streams)."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


class Service:
    def __init__(self, worker: EngineWorker, tokenizer: PreTrainedTokenizerBase, model_name: str, limits: Limits,
                 cache: ResponseCache, counters: ServerCounters):
        self.worker, self.tokenizer, self.model_name = worker, tokenizer, model_name
        self.limits, self.cache, self.counters = limits, cache, counters
        self.vocab = len(tokenizer)

    # --- admission ----------------------------------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def prompt_ids(self, req: GenerationFields) -> list[int]:
        if isinstance(req, ChatRequest):
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            try:
                return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                               return_dict=False))
            except Exception as e:  # noqa: BLE001 - a template that rejects the conversation: the client's input
                raise ApiError(400, f"messages: the chat template rejected them: {e}", param="messages") from None
        assert isinstance(req, CompletionRequest)
        if isinstance(req.prompt, str):
            return list(self.tokenizer(req.prompt).input_ids)
        bad = next((t for t in req.prompt if not 0 <= t < self.vocab), None)
        if bad is not None:
            raise ApiError(400, f"prompt: token id {bad} is outside the vocabulary [0, {self.vocab})", param="prompt")
        return list(req.prompt)  # type: ignore[arg-type]

    def admit(self, req: GenerationFields) -> Job:
        self.check_model(req.model)
        prompt = self.prompt_ids(req)
        if not prompt:
            raise ApiError(400, "prompt: it encodes to no tokens", param="prompt")
        lim, room = self.limits, self.limits.context - len(prompt)
        if lim.max_prompt_tokens and len(prompt) > lim.max_prompt_tokens:
            raise ApiError(400, f"prompt: {len(prompt)} tokens is over this server's limit of "
                                f"{lim.max_prompt_tokens}", param="prompt", code="prompt_too_long")
        asked = req.max_completion_tokens if isinstance(req, ChatRequest) and req.max_completion_tokens else \
            req.max_tokens
        max_tokens = asked if asked is not None else min(lim.max_tokens, room)
        if max_tokens > lim.max_tokens:
            raise ApiError(400, f"max_tokens: {max_tokens} is over this server's limit of {lim.max_tokens}",
                           param="max_tokens")
        if max_tokens < 1 or len(prompt) + max_tokens > lim.context:  # OpenAI's wording
            raise ApiError(400, f"This model's maximum context length is {lim.context} tokens. However, you "
                                f"requested {len(prompt) + max(max_tokens, 1)} tokens ({len(prompt)} in the prompt, "
                                f"{max(max_tokens, 1)} for the completion).",
                           param="messages" if isinstance(req, ChatRequest) else "prompt",
                           code="context_length_exceeded")
        sampling = self.sampling(req)
        key = None
        if req.temperature == 0:  # greedy: the answer is a function of this key alone
            key = (tuple(prompt), max_tokens, tuple(req.stops), not req.ignore_eos, req.repetition_penalty)
        return Job(f"cmpl-{uuid.uuid4().hex}", prompt, max_tokens, sampling, not req.ignore_eos, req.stops, key)

    @staticmethod
    def sampling(req: GenerationFields) -> Sampling | None:
        """None for plain greedy (the engine's batched argmax); otherwise the request's own sampling."""
        if req.temperature == 0:
            return None if req.repetition_penalty == 1.0 else Sampling(repetition_penalty=req.repetition_penalty)
        seed = req.seed if req.seed is not None else secrets.randbits(62)
        try:
            return Sampling(temperature=req.temperature, top_k=max(req.top_k, 0), top_p=req.top_p, min_p=req.min_p,
                            repetition_penalty=req.repetition_penalty, seed=seed)
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    # --- one run ------------------------------------------------------------------------------------------------
    async def start(self, job: Job) -> Run:
        """Start the job; raises ApiError if the engine refuses it (it waits for the first token to know)."""
        cached = self.cache.get(job.cache_key)
        if job.cache_key is not None and self.cache.enabled:
            self.counters.cache_hits, self.counters.cache_misses = self.cache.hits, self.cache.misses
        run = Run(self, job, cached)
        await run.begin()
        return run


class Run:
    """One request in flight. Iterate ``pieces()`` once; ``close()`` (always called) aborts an unfinished run."""

    def __init__(self, service: Service, job: Job, cached: CachedResponse | None):
        self.service, self.job, self.cached = service, job, cached
        self.outcome = Outcome()
        self.text = TextStream(service.tokenizer, job.stops)
        self.sink: asyncio.Queue | None = None
        self.first: StepOutput | None = None
        self.done = False

    async def begin(self) -> None:
        if self.cached is not None:
            return
        job = self.job
        self.sink = self.service.worker.submit(job.request_id, job.prompt, job.max_tokens, job.sampling,
                                               job.stop_on_eos)
        self.first = await self._next()

    async def _next(self) -> StepOutput:
        assert self.sink is not None
        item = await self.sink.get()
        if isinstance(item, ValueError):  # refused at admission (does not fit the pool, ...)
            self.done = True
            raise ApiError(400, str(item))
        if isinstance(item, Exception):
            self.done = True
            raise ApiError(500, f"the engine failed: {type(item).__name__}: {item}", kind="server_error")
        return item

    async def pieces(self) -> AsyncIterator[Piece]:
        if self.cached is not None:
            for i, token in enumerate(self.cached.tokens):
                last = i == len(self.cached.tokens) - 1
                yield self._piece(token, self.cached.finish_reason if last else None)
            self.done = True
            return
        item = self.first
        while item is not None:
            reason = "stop" if item.finish_reason == "eos" else item.finish_reason
            piece = self._piece(item.token, reason)
            if piece.finish_reason is not None:
                self.done = item.finished  # a stop string ends a run the engine still holds: close() aborts it
                self.service.cache.put(self.job.cache_key, CachedResponse(tuple(self.outcome.tokens),
                                                                          piece.finish_reason))
                yield piece
                return
            yield piece
            item = await self._next()

    def _piece(self, token: int, reason: str | None) -> Piece:
        self.outcome.tokens.append(token)
        text = self.text.add(token)
        if self.text.stopped:
            reason = "stop"
        elif reason is not None:
            text += self.text.finish()
        self.outcome.text += text
        self.outcome.finish_reason = reason
        return Piece([token], text, reason)

    def close(self) -> None:
        if not self.done and self.cached is None:
            self.service.worker.abort(self.job.request_id)
        self.done = True
