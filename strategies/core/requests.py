"""What a scheduling strategy is handed: requests with arrival offsets, and the runner's arrival clock.

The runner owns every clock. A scheduler still has to know which requests have *arrived*, so it gets a
``ServeClock`` whose ``now()`` it may read for that purpose only (to admit arrived requests, or to idle until
the next arrival with ``wait_until``) — never to time anything: emitted tokens are timestamped by the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


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


def arrived(requests: list[Request], clock: ServeClock) -> list[Request]:
    now = clock.now()
    return [r for r in requests if r.arrival_s <= now]


def serve_one_by_one(decoder: Any, model: Any, new_cache: Callable, requests: list[Request], sampling: Any,
                     emit: Callable, clock: ServeClock) -> list[list[int]]:
    """A single-prompt decoder on a request workload: requests one after another in arrival order, each started
    when it has arrived and the previous one is done."""
    outputs: list[list[int]] = [[] for _ in requests]
    for r in sorted(requests, key=lambda r: (r.arrival_s, r.index)):
        clock.wait_until(r.arrival_s)
        out = decoder.generate(model, new_cache, [list(r.prompt)], r.max_new_tokens, sampling,
                               lambda _, tokens, i=r.index: emit(i, tokens))
        outputs[r.index] = out[0]
    return outputs
