"""A response cache for identical greedy requests ("caching common queries"): off unless ``--response-cache N``.

Only greedy requests are cached: their answer is a function of the key alone (prompt ids, max tokens, stop strings,
whether EOS ends them, repetition penalty), so a hit returns exactly the tokens the engine would produce. A sampled
request never hits, even with a seed: the engine's seeded generator is per request, but caching it would hide a
change of sampling code behind old answers. Least recently used entries leave first. Used from the event loop only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedResponse:
    tokens: tuple[int, ...]
    finish_reason: str


class ResponseCache:
    def __init__(self, max_entries: int):
        if max_entries < 0:
            raise ValueError(f"--response-cache must be >= 0 entries (0 = off), got {max_entries}")
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple, CachedResponse] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def get(self, key: tuple | None) -> CachedResponse | None:
        if not self.enabled or key is None:
            return None
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: tuple | None, response: CachedResponse) -> None:
        if not self.enabled or key is None:
            return
        self.entries[key] = response
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
