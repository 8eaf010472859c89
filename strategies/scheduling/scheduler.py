"""Who runs next, over a block pool (nano-vllm's scheduler and block manager): ask ``can_*``, then act.

A ``Sequence`` is one request's state: its tokens (prompt, then generated), how many of them have K/V in the
pool (``num_computed``), and the blocks holding them. Each step the scheduler admits waiting sequences while
``max_batch`` and free blocks allow, makes sure every running sequence has a slot for its next token — preempting
the newest running sequence (recompute: its blocks are freed, its tokens kept, it waits again at the front) when
blocks run out — and hands the engine the tokens to compute. A request that could never fit the pool even alone
fails at once with a clear error instead of waiting forever.

With a ``PrefixIndex``, admission first reuses the cached blocks of the longest matching full-block prefix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from strategies.caches.block_pool import BlockPool
from strategies.core.requests import Request


@dataclass
class Sequence:
    request: Request
    tokens: list[int]
    num_computed: int = 0  # tokens whose K/V are in the pool
    blocks: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of the full blocks registered so far
    request_id: Hashable = None  # the engine's key (the request index when serving a workload)
    sampling: Any = None  # its own Sampling, or None for the engine's default
    generator: Any = None  # its own torch.Generator when it has its own Sampling
    stop_on_eos: bool = False

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - len(self.request.prompt)

    @property
    def is_finished(self) -> bool:
        return self.num_generated >= self.request.max_new_tokens

    @property
    def num_pending(self) -> int:
        """Tokens to run through the model before the next token can be sampled."""
        return len(self.tokens) - self.num_computed


class RequestTooLarge(ValueError):
    pass


class Scheduler:
    def __init__(self, pool: BlockPool, max_batch: int, prefix=None):
        self.pool, self.max_batch, self.prefix = pool, max_batch, prefix
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_prompt_tokens = self.num_cached_tokens = 0

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.pool.block_size)

    def check_fits(self, request: Request) -> None:
        """Raise RequestTooLarge if the request needs more blocks than the whole pool holds."""
        tokens = len(request.prompt) + request.max_new_tokens - 1  # the last token is never fed back
        need = self.blocks_for(tokens)
        if need > self.pool.num_blocks:
            raise RequestTooLarge(
                f"request {request.index!r} needs {need} blocks of {self.pool.block_size} tokens "
                f"({len(request.prompt)} prompt + {request.max_new_tokens} new) but the pool has "
                f"{self.pool.num_blocks}; raise num_blocks")

    # --- admission -------------------------------------------------------------------------------------------
    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Pool blocks already holding this sequence's leading full blocks (at least one token stays to compute)."""
        if self.prefix is None:
            return []
        return self.prefix.lookup(seq.tokens, max_blocks=(len(seq.tokens) - 1) // self.pool.block_size)

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self.cached_prefix(seq)
        fresh = self.blocks_for(len(seq.tokens)) - len(hits)
        revived = sum(1 for b in hits if self.pool.ref_counts[b] == 0)  # cached but free: they leave the free list
        return self.pool.can_allocate(fresh + revived)

    def allocate(self, seq: Sequence) -> None:
        hits = self.cached_prefix(seq)
        self.pool.hold(hits)
        fresh = self.pool.allocate(self.blocks_for(len(seq.tokens)) - len(hits))
        if self.prefix is not None:
            self.prefix.forget(fresh)  # these blocks are reused now: evict what they cached
            seq.block_hashes = self.prefix.chain(seq.tokens, len(hits))
        seq.blocks = hits + fresh
        seq.num_computed = len(hits) * self.pool.block_size
        self.num_prompt_tokens += len(seq.tokens)
        self.num_cached_tokens += seq.num_computed

    def deallocate(self, seq: Sequence) -> None:
        self.pool.free(list(reversed(seq.blocks)))  # tail blocks first in line for eviction (LRU)
        seq.blocks, seq.block_hashes, seq.num_computed = [], [], 0

    # --- one step ----------------------------------------------------------------------------------------------
    def can_append(self, seq: Sequence) -> bool:
        return self.pool.can_allocate(max(0, self.blocks_for(len(seq.tokens)) - len(seq.blocks)))

    def append(self, seq: Sequence) -> None:
        missing = self.blocks_for(len(seq.tokens)) - len(seq.blocks)
        if missing > 0:
            fresh = self.pool.allocate(missing)
            if self.prefix is not None:
                self.prefix.forget(fresh)
            seq.blocks += fresh

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.deallocate(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> list[Sequence]:
        """Secure a slot for every running sequence's next token (preempting the newest when blocks run out),
        then admit waiting sequences while the batch and the free blocks allow; return the running sequences."""
        for seq in list(self.running):
            while seq in self.running and not self.can_append(seq):
                self.preempt(self.running[-1])  # the newest gives its blocks back (recomputed later)
            if seq in self.running:
                self.append(seq)
        deferred: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_batch and self.can_allocate(self.waiting[0]):
            seq = self.waiting.popleft()
            if self.is_computing_its_prefix(seq):
                deferred.append(seq)
                continue
            self.allocate(seq)
            self.running.append(seq)
        self.waiting.extendleft(reversed(deferred))  # they keep their place in line
        return list(self.running)

    def is_computing_its_prefix(self, seq: Sequence) -> bool:
        """Whether a running sequence is computing the next block ``seq`` could share: then ``seq`` waits until
        that block is published instead of computing it a second time (SGLang groups such requests the same
        way). Co-arriving requests with a common prefix compute it once."""
        if self.prefix is None:
            return False
        shareable = self.prefix.chain(seq.tokens, (len(seq.tokens) - 1) // self.pool.block_size)
        hits = len(self.cached_prefix(seq))
        if hits >= len(shareable):
            return False
        nxt = shareable[hits]
        for other in self.running:
            full = len(other.request.prompt) // self.pool.block_size
            published = len(other.block_hashes)
            if published < full and nxt in self.prefix.chain(other.tokens, full)[published:]:
                return True
        return False

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.deallocate(seq)

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publish the newly completed full blocks of ``seq`` in the prefix index."""
        if self.prefix is not None:
            seq.block_hashes = self.prefix.publish(seq.tokens, seq.blocks, seq.block_hashes, seq.num_computed)
