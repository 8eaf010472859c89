"""``--max-concurrency N``: at most N requests in flight, as vLLM's bench serve limits its client with a semaphore.

A request is *sent* when it has arrived and fewer than N earlier requests are unfinished; its latencies count from
then (vLLM's client starts its clock after acquiring the semaphore). The scheduler is not changed: it is handed the
requests with *virtual* arrival times (their position in arrival order) and a clock whose ``now()`` is the last
position already sent, so "has it arrived?" means "has it been sent?" to every scheduler alike.
"""

from __future__ import annotations

from strategies.core.requests import Request, in_arrival_order


class ConcurrencyGate:
    """A ServeClock over ``clock`` (the run's RunClock) letting at most ``limit`` requests be in flight."""

    def __init__(self, requests: list[Request], limit: int, clock) -> None:
        if limit < 1:
            raise ValueError(f"max concurrency must be >= 1, got {limit}")
        self.clock, self.limit = clock, limit
        self.order = in_arrival_order(requests)
        self.position = {r.index: p for p, r in enumerate(self.order)}
        # The scheduler sees position p as the arrival time of the p-th request (ties broken, order kept).
        self.requests = [Request(r.index, r.prompt, r.max_new_tokens, float(self.position[r.index])) for r in requests]
        self.remaining = {r.index: r.max_new_tokens for r in requests}
        self.finished = 0
        # When each position was allowed in (run seconds): the first ``limit`` at once, then one per finished request.
        self.opened = [0.0] * min(limit, len(self.order))

    def emitted(self, index: int, count: int, now: float) -> None:
        """Called with every emission (after it is timestamped): a request that is done frees its slot."""
        before = self.remaining[index]
        self.remaining[index] = before - count
        if before > 0 >= self.remaining[index]:
            self.finished += 1
            if len(self.opened) < len(self.order):
                self.opened.append(now)

    def sent_at(self, index: int) -> float:
        """Run seconds when the request was sent: it had arrived and a slot was free."""
        p = self.position[index]
        return max(self.order[p].arrival_s, self.opened[p] if p < len(self.opened) else self.order[p].arrival_s)

    def now(self) -> float:
        """The last position sent (-1: none yet): positions open and really arrived."""
        real = self.clock.now()
        sent = 0
        while sent < len(self.opened) and self.order[sent].arrival_s <= real:
            sent += 1
        return float(sent - 1)

    def wait_until(self, t: float) -> None:
        """Schedulers wait only when idle (everything sent has finished, so the slot is free): wait for the request at
        position ``t`` really to arrive."""
        p = min(max(int(-(-t // 1)), 0), len(self.order) - 1)
        self.clock.wait_until(self.order[p].arrival_s)
        if p >= len(self.opened):  # an idle scheduler holds nothing (a refused request never finishes): free it
            self.opened.extend([self.clock.now()] * (p + 1 - len(self.opened)))
