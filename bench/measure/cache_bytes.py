"""The bytes a strategy's caches really hold, read while it runs (the prompt and the serving probes share this).

Every cache the decoder makes through ``new_cache`` is watched; the caller reads their sum after each emission,
when a forward has finished and every layer has been updated.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any


class CacheWatch:
    """``keep``: hold every cache to the end, to read it after the run (one request's cache); otherwise watch a cache
    only while the decoder holds it, since a server's caches come and go (weak references)."""

    def __init__(self, new_cache: Callable[[int, int], Any], keep: bool):
        self.make = new_cache
        self.caches: list[Any] | weakref.WeakSet = [] if keep else weakref.WeakSet()
        self.peak = 0

    def new_cache(self, batch: int, max_len: int) -> Any:
        """What the decoder is handed in place of ``new_cache``."""
        cache = self.make(batch, max_len)
        if cache is not None:
            self.caches.append(cache) if isinstance(self.caches, list) else self.caches.add(cache)
        return cache

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in list(self.caches) if hasattr(c, "nbytes"))

    def read(self) -> None:
        self.peak = max(self.peak, self.nbytes())

    def failure(self) -> str | None:
        """Why a watched cache did not do its job (an eviction that kept everything...), or None."""
        for cache in list(self.caches):
            if hasattr(cache, "check") and (why := cache.check()):
                return why
        return None
