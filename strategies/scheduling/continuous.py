"""`continuous`: iteration-level scheduling over a block pool (Orca, vLLM): every step admits arrived requests
while ``max_batch`` and free blocks allow, runs their prefill (whole, or ``chunked_prefill`` tokens per step)
and one batched decode step for all others, and retires finished requests at once. When blocks run out the
newest running request is preempted and later recomputed (counted in ``preemptions``).

Policy lives in scheduler.py, the batched forward over the pool in paged_batch.py; this
module is the engine loop. It runs over ``paged`` (the default) or ``prefix-cache`` (shared prompt prefixes).
The pool (``num_blocks`` × ``block_size`` tokens, all layers) is reserved once per run, as a server does.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.caches.block_pool import BlockPool
from strategies.caches.prefix_cache import PrefixCache, PrefixIndex
from strategies.core.base import CacheStrategy, Emit, Generation, NewCache, RequestEngine, kv_shape
from strategies.core.requests import Request, ServeClock, in_arrival_order
from strategies.core.sampling import Sampling, eos_ids
from strategies.scheduling.paged_batch import forward_rows
from strategies.scheduling.scheduler import RequestTooLarge, Scheduler, Sequence


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
    num_blocks: int = field(default=256, metadata={
        "help": "blocks in the pool, reserved once per run (num_blocks x block_size tokens), >= 1"})
    chunked_prefill: int = field(
        default=0, metadata={"help": "prompt tokens prefilled per step, >= 0 (0: whole prompts at admission)"})

    def validate(self) -> None:
        for key in ("max_batch", "block_size", "num_blocks"):
            if getattr(self, key) < 1:
                raise ValueError(f"continuous.{key} must be >= 1, got {getattr(self, key)}")
        if self.chunked_prefill < 0:
            raise ValueError(f"continuous.chunked_prefill must be >= 0 (0 = off), got {self.chunked_prefill}")

    @torch.inference_mode()
    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        layers, kv_heads, head_dim = kv_shape(model.config)
        block_size = self.block_size
        pool = BlockPool(self.num_blocks, block_size, layers, kv_heads, head_dim, model.dtype, model.device)
        pool.keys.zero_(), pool.values.zero_()  # padding reads stale slots with zero weight: keep them finite
        prefix = PrefixIndex(block_size) if isinstance(cache, PrefixCache) else None
        sched = Scheduler(pool, self.max_batch, prefix)
        banned, gen = eos_ids(model), sampling.generator(model.device)
        outputs: list[list[int]] = [[] for _ in requests]
        failures: dict[int, str] = {}
        arrivals = deque(in_arrival_order(requests))
        peak_used, utilisation, steps = 0, 0.0, 0
        while arrivals or sched.running or sched.waiting:
            now = clock.now()
            while arrivals and arrivals[0].arrival_s <= now:
                r = arrivals.popleft()
                try:
                    sched.check_fits(r)
                    sched.waiting.append(Sequence(r, list(r.prompt)))
                except RequestTooLarge as e:
                    failures[r.index] = str(e)
            if not sched.running and not sched.waiting:
                if arrivals:
                    clock.wait_until(arrivals[0].arrival_s)
                continue
            running = sched.schedule()
            peak_used = max(peak_used, pool.num_used_blocks)
            utilisation += sum(s.num_computed for s in running) / max(1, pool.num_used_blocks * block_size)
            steps += 1
            ready = self.run_step(model, sched, layers, running)
            for seq, logits in ready:
                token = int(sampling.select(logits, torch.tensor([seq.tokens], device=model.device), gen, banned))
                seq.tokens.append(token)
                emit(seq.request.index, [token])
                if seq.is_finished:
                    outputs[seq.request.index] = seq.tokens[len(seq.request.prompt):]
                    sched.finish(seq)
        stats = {"peak_blocks_used": peak_used, "num_blocks": self.num_blocks,
                 "block_utilisation": utilisation / steps if steps else math.nan,
                 "preemptions": sched.num_preemptions, "pool_bytes": pool.reserved_bytes,
                 "prefix_hit_rate": sched.num_cached_tokens / max(1, sched.num_prompt_tokens)
                 if prefix is not None else math.nan, "failed_requests": len(failures)}
        return Generation(outputs, stats, failures)

    def run_step(self, model: PreTrainedModel, sched: Scheduler, layers: int, running: list[Sequence]
                 ) -> list[tuple[Sequence, torch.Tensor]]:
        """Prefill (chunks) one sequence per forward, then one batched decode for every sequence with one pending
        token; returns (sequence, logits) for those whose every token is now computed."""
        ready, budget, pool = [], self.chunked_prefill or math.inf, sched.pool
        decoding = [s for s in running if s.num_pending == 1]
        for seq in (s for s in running if s.num_pending > 1):
            n = int(min(seq.num_pending, budget))
            if n < 1:
                break
            budget -= n
            start = seq.num_computed
            logits = forward_rows(model, pool, layers, [(seq.blocks, seq.tokens[start : start + n], start)])[0]
            seq.num_computed += n
            sched.register_full_blocks(seq)
            if seq.num_pending == 0:
                ready.append((seq, logits))
        if decoding:
            logits = forward_rows(model, pool, layers,
                                  [(s.blocks, s.tokens[-1:], s.num_computed) for s in decoding])
            for seq, row in zip(decoding, logits):
                seq.num_computed += 1
                sched.register_full_blocks(seq)
                ready.append((seq, row))
        return ready
