"""OpenAI's response shapes: whole responses, and server-sent-event chunks ending with a usage chunk and [DONE].

Every generated token is its own chunk (its text may be empty while a multi-byte character or a possible stop
string is held back), and the finish reason rides on the last token's chunk, so a client's chunk times are token
times. ``token_ids`` on a choice (vLLM's ``return_token_ids``) lets a benchmark compare exact tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from bench.serving.schemas import ApiError
from bench.serving.service import Outcome, Piece, Run

DONE = b"data: [DONE]\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Framing:
    """The envelope of one endpoint's responses: ``chat`` or ``completion``."""

    def __init__(self, chat: bool, request_id: str, model: str, with_ids: bool):
        self.chat, self.id, self.model, self.with_ids = chat, request_id, model, with_ids
        self.created = int(time.time())

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def chunk(self, piece: Piece, first: bool, include_usage: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": piece.text} if first else {"content": piece.text}
        else:
            choice["text"] = piece.text
        choice.update(logprobs=None, finish_reason=piece.finish_reason)
        if self.with_ids:
            choice["token_ids"] = piece.tokens
        out = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])
        if include_usage:
            out["usage"] = None  # OpenAI's shape: null on every chunk but the last
        return out

    def usage_chunk(self, prompt: int, completion: int) -> dict[str, Any]:
        out = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        out["usage"] = usage(prompt, completion)
        return out

    def whole(self, outcome: Outcome, prompt: int) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": outcome.text}
        else:
            choice["text"] = outcome.text
        choice.update(logprobs=None, finish_reason=outcome.finish_reason)
        if self.with_ids:
            choice["token_ids"] = outcome.tokens
        out = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        out["usage"] = usage(prompt, len(outcome.tokens))
        return out


def event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


async def sse(run: Run, framing: Framing, include_usage: bool) -> AsyncIterator[bytes]:
    """The run as server-sent events. An engine failure mid-stream becomes an error event (the status line has
    gone out already), then [DONE]."""
    first = True
    try:
        async for piece in run.pieces():
            yield event(framing.chunk(piece, first, include_usage))
            first = False
    except ApiError as e:
        yield event(e.body())
        yield DONE
        return
    if include_usage:
        yield event(framing.usage_chunk(len(run.job.prompt), len(run.outcome.tokens)))
    yield DONE
