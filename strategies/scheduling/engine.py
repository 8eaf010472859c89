"""The step-wise continuous-batching engine (nano-vllm's LLMEngine): ``add`` requests, call ``step`` until
``has_work`` is false. ``ContinuousBatching.serve`` (the benchmark) and ``kvbench serve`` (the server) both drive
this same loop, so what is measured is what is served.

One ``step`` is one scheduler iteration: secure a slot for every running request's next token (preempting the
newest when blocks run out), admit waiting requests, run ONE forward holding every decode and up to
``max_prefill_tokens`` prompt tokens (Sarathi-style chunked prefill mixed with decodes), sample one token for
each request whose tokens are all computed, and retire the finished ones (their blocks are freed at once).

Sampling is per request: a request given its own ``Sampling`` gets its own ``torch.Generator`` seeded from
``sampling.seed`` (its draws do not depend on who shares its batch); ``None`` means the engine's default
sampling and generator. Unless ``stop_on_eos``, EOS ids are banned so benchmarks get fixed lengths; with it,
sampling an EOS finishes the request with ``finish_reason`` ``"eos"``. Single-threaded by design.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from collections.abc import Sequence as Tokens
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from strategies.caches.block_pool import BlockPool
from strategies.caches.prefix_cache import PrefixIndex
from strategies.core.base import kv_shape
from strategies.core.requests import Request
from strategies.core.sampling import GREEDY, Sampling, ban, eos_ids
from strategies.scheduling.paged_attention import forward_packed, supports_packed
from strategies.scheduling.paged_batch import forward_rows
from strategies.scheduling.scheduler import RequestTooLarge, Scheduler, Sequence

if TYPE_CHECKING:
    from strategies.scheduling.continuous import ContinuousBatching

__all__ = ["Engine", "RequestTooLarge", "StepOutput"]


@dataclass
class StepOutput:
    request_id: Hashable
    token: int
    finished: bool
    finish_reason: str | None  # "length" | "eos" | None while running


class Engine:
    def __init__(self, model, strategy: ContinuousBatching, prefix_cache: bool = False, *,
                 num_blocks: int | None = None, sampling: Sampling | None = None) -> None:
        """``num_blocks`` overrides the strategy's pool size (``serve`` passes the one it sized for its workload);
        ``sampling`` is the default for requests added without their own."""
        self.model, self.strategy = model, strategy
        self.num_layers, kv_heads, head_dim = kv_shape(model.config)
        blocks = num_blocks or strategy.pool_blocks(model)
        self.packed = supports_packed(model) is None  # else the padded batch of paged_batch.py
        self.pool = BlockPool(blocks, strategy.block_size, self.num_layers, kv_heads, head_dim, model.dtype,
                              model.device, layout="token_major" if self.packed else "head_major")
        self.pool.keys.zero_(), self.pool.values.zero_()  # padding reads stale slots with zero weight: keep finite
        self.prefix = PrefixIndex(strategy.block_size) if prefix_cache else None
        self.sched = Scheduler(self.pool, strategy.max_batch, self.prefix)
        self.sampling = sampling or GREEDY
        self.generator = self.sampling.generator(model.device)
        self.eos = eos_ids(model)
        self.seqs: dict[Hashable, Sequence] = {}
        self.num_tokens_generated = self.num_steps = self.peak_blocks_used = 0
        self.utilisation = 0.0

    # --- requests ------------------------------------------------------------------------------------------------
    def add(self, request_id: Hashable, prompt: Tokens[int], max_new_tokens: int, sampling: Sampling | None = None,
            stop_on_eos: bool = False) -> None:
        """Queue a request. Raises RequestTooLarge (a ValueError) if it could never fit the pool, ValueError for
        an empty prompt, max_new_tokens < 1 or a request id already in the engine."""
        if request_id in self.seqs:
            raise ValueError(f"request id {request_id!r} is already in the engine; ids must be unique")
        if not prompt:
            raise ValueError(f"request {request_id!r} has an empty prompt; give at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"request {request_id!r}: max_new_tokens must be >= 1, got {max_new_tokens}")
        request = Request(request_id, tuple(int(t) for t in prompt), int(max_new_tokens))  # type: ignore[arg-type]
        self.sched.check_fits(request)
        own = sampling is not None
        seq = Sequence(request, list(request.prompt), request_id=request_id, sampling=sampling,
                       generator=sampling.generator(self.model.device) if own else None, stop_on_eos=stop_on_eos)
        self.seqs[request_id] = seq
        self.sched.waiting.append(seq)

    def abort(self, request_id: Hashable) -> None:
        """Drop a waiting or running request and free its blocks now (unknown ids are ignored: it may just have
        finished)."""
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return
        if seq in self.sched.running:
            self.sched.finish(seq)
        elif seq in self.sched.waiting:
            self.sched.waiting.remove(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.sched.running or self.sched.waiting)

    # --- one iteration -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        if not self.has_work:
            return []
        running = self.sched.schedule()
        self.peak_blocks_used = max(self.peak_blocks_used, self.pool.num_used_blocks)
        self.utilisation += sum(s.num_computed for s in running) / max(1, self.pool.num_used_blocks
                                                                        * self.pool.block_size)
        self.num_steps += 1
        ready = self.forward(running)
        if not ready:
            return []
        tokens = self.sample([s for s, _ in ready], torch.stack([row for _, row in ready]))
        outputs = []
        for (seq, _), token in zip(ready, tokens):
            seq.tokens.append(token)
            self.num_tokens_generated += 1
            reason = ("eos" if seq.stop_on_eos and token in self.eos else
                      "length" if seq.is_finished else None)
            if reason is not None:
                self.sched.finish(seq)
                del self.seqs[seq.request_id]
            outputs.append(StepOutput(seq.request_id, token, reason is not None, reason))
        return outputs

    def forward(self, running: list[Sequence]) -> list[tuple[Sequence, torch.Tensor]]:
        """One forward of every decode plus prompt chunks within the prefill budget; (sequence, logits) for each
        sequence whose every token is now computed."""
        budget = self.strategy.prefill_budget() or math.inf
        rows: list[tuple[Sequence, int]] = []
        for seq in running:  # admission order: the oldest prompts are prefilled first
            if seq.num_pending == 1:
                rows.append((seq, 1))
            elif budget >= 1:
                n = int(min(seq.num_pending, budget))
                budget -= n
                rows.append((seq, n))
        if not rows:
            return []
        batch = [(s.blocks, s.tokens[s.num_computed : s.num_computed + n], s.num_computed) for s, n in rows]
        done = [i for i, (s, n) in enumerate(rows) if s.num_pending == n]  # rows whose last pending token runs now
        if self.packed:
            logits = forward_packed(self.model, self.pool, self.num_layers, batch, done)
        else:
            logits = forward_rows(self.model, self.pool, self.num_layers, batch)[done]
        for seq, n in rows:
            seq.num_computed += n
            self.sched.register_full_blocks(seq)
        return [(rows[i][0], row) for i, row in zip(done, logits)]

    def sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """One token per sequence: every default-greedy row in one argmax, the others with their own sampling."""
        out: list[int | None] = [None] * len(seqs)
        plain = [i for i, s in enumerate(seqs) if s.sampling is None and self.sampling == GREEDY and not s.stop_on_eos]
        if plain:
            best = ban(logits[plain], self.eos).argmax(-1).tolist()
            for i, t in zip(plain, best):
                out[i] = t
        for i, seq in enumerate(seqs):
            if out[i] is not None:
                continue
            sampling = seq.sampling or self.sampling
            gen = seq.generator if seq.sampling is not None else self.generator
            history = torch.tensor([seq.tokens], device=logits.device)
            out[i] = int(sampling.select(logits[i : i + 1], history, gen, None if seq.stop_on_eos else self.eos)[0])
        return out  # type: ignore[return-value]

    def stats(self) -> dict[str, float]:
        s = self.sched
        return {"running": len(s.running), "waiting": len(s.waiting), "blocks_used": self.pool.num_used_blocks,
                "blocks_total": self.pool.num_blocks, "peak_blocks_used": self.peak_blocks_used,
                "prefix_hit_rate": s.num_cached_tokens / max(1, s.num_prompt_tokens) if self.prefix else math.nan,
                "preemptions": s.num_preemptions, "tokens_generated": self.num_tokens_generated,
                "prompt_tokens": s.num_prompt_tokens, "cached_tokens": s.num_cached_tokens,
                "block_utilisation": self.utilisation / self.num_steps if self.num_steps else math.nan,
                "steps": self.num_steps}
