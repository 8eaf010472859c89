"""`continuous`: iteration-level scheduling over a block pool (Orca, vLLM): every step admits arrived requests
while ``max_batch`` and free blocks allow, runs ONE forward holding every decode plus up to ``max_prefill_tokens``
prompt tokens (chunked prefill mixed with decodes), and retires finished requests at once. When blocks run out
the newest running request is preempted and later recomputed (counted in ``preemptions``).

Policy lives in scheduler.py, the step-wise engine (shared with ``kvbench serve``) in engine.py, the forward over
the pool in paged_batch.py; this module is the strategy: its parameters, the pool size, and ``serve``, which feeds
arrived requests to the engine and steps it. It runs over ``paged`` (the default) or ``prefix-cache``.

The pool is reserved once per run, as a server does. ``num_blocks=auto`` sizes it to what the workload can need
at once (the ``max_batch`` largest requests; plus one prompt's worth kept for prefix reuse), capped by
``kv_memory_mb``; the row reports the blocks reserved (``num_blocks``) and the peak used (``peak_blocks_used``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.caches.prefix_cache import PrefixCache
from strategies.core.base import CacheStrategy, Emit, Generation, NewCache, RequestEngine, kv_shape
from strategies.core.requests import Request, ServeClock, in_arrival_order
from strategies.core.sampling import Sampling
from strategies.scheduling.engine import Engine
from strategies.scheduling.scheduler import RequestTooLarge


@dataclass
class ContinuousBatching(RequestEngine):
    name = "continuous"
    lossless = True
    default_cache = "paged"
    allowed_caches = ("paged", "prefix-cache")
    summary = "iteration-level batching over a paged block pool; preempts (recompute) when blocks run out"
    max_batch: int = field(default=16, metadata={"help": "most requests running in one step, >= 1"})
    block_size: int = field(
        default=16, metadata={"help": "tokens per block of the engine's pool (its own, not paged.block_size), >= 1"})
    num_blocks: str = field(default="auto", metadata={  # "auto" or a count (an int is taken as it is)
        "help": "blocks in the pool, reserved once per run, >= 1; auto: what the workload can need at once, "
                "capped by kv_memory_mb"})
    kv_memory_mb: float = field(default=1024.0, metadata={
        "help": "memory budget of an auto-sized pool (K and V of all layers), > 0"})
    max_prefill_tokens: int = field(default=2048, metadata={
        "help": "prompt tokens computed per step across requests, mixed with the decodes, >= 0 (0: no limit)"})
    chunked_prefill: int = field(
        default=0, metadata={"help": "if > 0, overrides max_prefill_tokens (the older name), >= 0"})

    def validate(self) -> None:
        for key in ("max_batch", "block_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"continuous.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_blocks != "auto":
            count = str(self.num_blocks)
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"continuous.num_blocks must be an integer >= 1 or auto, got {self.num_blocks!r}")
            self.num_blocks = int(count)  # type: ignore[assignment]
        if not self.kv_memory_mb > 0:
            raise ValueError(f"continuous.kv_memory_mb must be > 0, got {self.kv_memory_mb}")
        for key in ("max_prefill_tokens", "chunked_prefill"):
            if getattr(self, key) < 0:
                raise ValueError(f"continuous.{key} must be >= 0 (0 = no limit), got {getattr(self, key)}")

    def prefill_budget(self) -> int:
        """Prompt tokens one step may compute (0: no limit)."""
        return self.chunked_prefill or self.max_prefill_tokens

    def budget_blocks(self, model: PreTrainedModel) -> int:
        """Blocks that fit ``kv_memory_mb`` (K and V, every layer, the model's dtype)."""
        layers, kv_heads, head_dim = kv_shape(model.config)
        block_bytes = 2 * layers * kv_heads * self.block_size * head_dim * torch.finfo(model.dtype).bits // 8
        return max(1, int(self.kv_memory_mb * 2**20 // block_bytes))

    def pool_blocks(self, model: PreTrainedModel, requests: list[Request] | None = None,
                    prefix_cache: bool = False) -> int:
        """The pool size: ``num_blocks`` if given, else what ``requests`` can need at once within the budget (the
        whole budget when the workload is unknown, as a server)."""
        if self.num_blocks != "auto":
            return int(self.num_blocks)
        budget = self.budget_blocks(model)
        if not requests:
            return budget
        need = sorted((-(-(len(r.prompt) + r.max_new_tokens - 1) // self.block_size) for r in requests),
                      reverse=True)
        want = sum(need[: self.max_batch])
        if prefix_cache:  # room to keep the longest prompt's blocks cached while others run
            want += max(len(r.prompt) for r in requests) // self.block_size
        return max(1, min(want, budget))

    @torch.inference_mode()
    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        prefix = isinstance(cache, PrefixCache)
        engine = Engine(model, self, prefix_cache=prefix, num_blocks=self.pool_blocks(model, requests, prefix),
                        sampling=sampling)
        outputs: list[list[int]] = [[] for _ in requests]
        failures: dict[int, str] = {}
        arrivals = deque(in_arrival_order(requests))
        while arrivals or engine.has_work:
            now = clock.now()
            while arrivals and arrivals[0].arrival_s <= now:
                r = arrivals.popleft()
                try:
                    engine.add(r.index, r.prompt, r.max_new_tokens)
                except RequestTooLarge as e:
                    failures[r.index] = str(e)
            if not engine.has_work:
                if arrivals:
                    clock.wait_until(arrivals[0].arrival_s)
                continue
            for out in engine.step():
                outputs[out.request_id].append(out.token)  # type: ignore[index]
                emit(out.request_id, [out.token])  # type: ignore[arg-type]
        s = engine.stats()
        stats = {"peak_blocks_used": s["peak_blocks_used"], "num_blocks": s["blocks_total"],
                 "kv_pool_mb": round(engine.pool.reserved_bytes / 2**20, 1),
                 "block_utilisation": s["block_utilisation"], "preemptions": s["preemptions"],
                 "pool_bytes": engine.pool.reserved_bytes,
                 "prefix_hit_rate": s["prefix_hit_rate"] if prefix else math.nan, "failed_requests": len(failures)}
        return Generation(outputs, stats, failures)
