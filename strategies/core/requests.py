"""What a scheduling strategy is handed — requests with arrival offsets and the runner's arrival clock — and what
every decoder hands back, a ``Generation``.

The runner owns every clock. A scheduler still has to know which requests have *arrived*, so it gets a
``ServeClock`` whose ``now()`` it may read for that purpose only (to admit arrived requests, or to idle until
the next arrival with ``wait_until``) — never to time anything: emitted tokens are timestamped by the runner.
``Generation`` lives here rather than in base.py because ``serve_one_by_one`` builds one and base.py imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# emit(request_index, token_ids): called by a decoder each time it produces tokens (possibly several at once).
Emit = Callable[[int, Sequence[int]], None]


@dataclass
class Generation:
    """What ``generate`` and ``serve`` return (gpt-fast's ``seq, stats``): the new token ids per prompt or request,
    the figures of this very call (merged into the row), and the requests refused with the reason."""

    tokens: list[list[int]]
    stats: dict[str, Any] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)  # request index -> why it was refused (serving)


@dataclass(frozen=True)
class Request:
    """One request: ``index`` is its position in the workload (what ``emit`` and outputs are keyed by)."""

    index: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    arrival_s: float = 0.0  # offset from the start of the run


class ServeClock(Protocol):
    def now(self) -> float:
        """Seconds since the run started (for deciding which requests have arrived, nothing else)."""

    def wait_until(self, t: float) -> None:
        """Block until ``now() >= t`` (used when nothing has arrived yet)."""


class InstantClock:
    """Every request has arrived: how a request engine serves the prompt list of ``generate``."""

    def now(self) -> float:
        return math.inf

    def wait_until(self, t: float) -> None:
        pass


def as_requests(prompts: list[list[int]], max_new_tokens: int) -> list[Request]:
    """A prompt list as requests, all arrived at t=0 (``generate`` on a request engine)."""
    return [Request(i, tuple(p), max_new_tokens) for i, p in enumerate(prompts)]


def in_arrival_order(requests: list[Request]) -> list[Request]:
    return sorted(requests, key=lambda r: (r.arrival_s, r.index))


def arrived(requests: list[Request], clock: ServeClock) -> list[Request]:
    now = clock.now()
    return [r for r in requests if r.arrival_s <= now]


def arrival_groups(requests: list[Request], clock: ServeClock, max_size: int) -> Iterator[list[Request]]:
    """Static batches in arrival order: each is what has arrived when the engine asks for the next one (it waits for
    the first arrival when nothing has), up to ``max_size``. Lazy, so the clock is read once the last batch is done."""
    waiting = in_arrival_order(requests)
    while waiting:
        clock.wait_until(waiting[0].arrival_s)
        group = arrived(waiting, clock)[:max_size]
        waiting = [r for r in waiting if r not in group]
        yield group


# run_batch(prompts, max_new_tokens per prompt, emit by position in the batch) -> new tokens per prompt
RunBatch = Callable[[list[list[int]], list[int], Emit], list[list[int]]]


def serve_in_groups(run_batch: RunBatch, requests: list[Request], emit: Emit, clock: ServeClock,
                    max_size: int) -> list[list[int]]:
    """Tokens per request, served by ``run_batch`` one arrival group (``arrival_groups``) after another."""
    outputs: list[list[int]] = [[] for _ in requests]
    for group in arrival_groups(requests, clock, max_size):
        tokens = run_batch([list(r.prompt) for r in group], [r.max_new_tokens for r in group],
                           lambda b, t, g=group: emit(g[b].index, t))
        for r, out in zip(group, tokens):
            outputs[r.index] = out
    return outputs


# generate(prompts, max_new_tokens, emit): a decoder's generate with its model, cache and sampling bound
GenerateFn = Callable[[list[list[int]], int, Emit], Generation]


def serve_one_by_one(generate: GenerateFn, requests: list[Request], emit: Emit, clock: ServeClock) -> Generation:
    """A single-prompt decoder on a request workload: requests one after another in arrival order, each started
    when it has arrived and the previous one is done. The figures are those of the last call: a decoder whose
    figures are counts over requests (speculation) accumulates them across calls itself."""
    outputs: list[list[int]] = [[] for _ in requests]
    stats: dict[str, Any] = {}
    for r in in_arrival_order(requests):
        clock.wait_until(r.arrival_s)
        out = generate([list(r.prompt)], r.max_new_tokens, lambda _, tokens, i=r.index: emit(i, tokens))
        outputs[r.index], stats = out.tokens[0], out.stats
    return Generation(outputs, stats)
