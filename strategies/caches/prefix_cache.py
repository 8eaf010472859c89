"""`prefix-cache`: blocks keyed by the chained hash of their token prefix, reused across requests (vLLM's
automatic prefix caching, nano-vllm's hashed blocks).

A full block's key is ``hash((key of the previous block, its tokens))``, so equal keys mean equal whole prefixes.
When a request is admitted, the longest run of its leading full blocks found in the index is shared (reference
counted in the pool) instead of recomputed. A block nobody holds stays cached, sitting in the pool's free list in
the order it was freed: allocation takes the least recently freed block first (LRU) and its key is forgotten then.

It is a cache strategy that the ``continuous`` and ``sequential`` decoders recognise (``continuous+prefix-cache``);
under plain ``step`` decoding it is the ``paged`` cache (nothing to share within one request).
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.caches.paged import Paged


class PrefixIndex:
    def __init__(self, block_size: int):
        self.block_size = block_size
        self.block_of: dict[int, int] = {}  # chained hash -> block id
        self.hash_of: dict[int, int] = {}  # block id -> chained hash

    def chain(self, tokens: list[int], num_blocks: int) -> list[int]:
        """Chained hashes of the first ``num_blocks`` full blocks of ``tokens``."""
        hashes, prev, bs = [], 0, self.block_size
        for k in range(num_blocks):
            prev = hash((prev, tuple(tokens[k * bs : (k + 1) * bs])))
            hashes.append(prev)
        return hashes

    def lookup(self, tokens: list[int], max_blocks: int) -> list[int]:
        """Block ids caching the longest run of leading full blocks of ``tokens`` (at most ``max_blocks``)."""
        hits = []
        for h in self.chain(tokens, max_blocks):
            if h not in self.block_of:
                break
            hits.append(self.block_of[h])
        return hits

    def publish(self, tokens: list[int], blocks: list[int], hashes: list[int], num_computed: int) -> list[int]:
        """Register the full blocks computed since ``hashes`` was last extended; returns the extended hashes."""
        full = min(num_computed // self.block_size, len(blocks))
        if full <= len(hashes):
            return hashes
        hashes = self.chain(tokens, full)  # cheap at these lengths; keeps one definition of a key
        for h, block in zip(hashes, blocks):
            if h not in self.block_of and block not in self.hash_of:
                self.block_of[h], self.hash_of[block] = block, h
        return hashes

    def forget(self, blocks: list[int]) -> None:
        """Blocks handed out afresh no longer cache what they held (eviction)."""
        for block in blocks:
            h = self.hash_of.pop(block, None)
            if h is not None:
                del self.block_of[h]

    def __len__(self) -> int:
        return len(self.block_of)


@dataclass
class PrefixCache(Paged):
    name = "prefix-cache"
    lossless = True
    summary = "paged blocks keyed by the hash of their token prefix, shared across requests, evicted LRU"
