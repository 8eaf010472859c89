"""Score-based eviction (kvpress's shape): this base decides *when* to evict and keeps the books; a leaf
(`snapkv`, `h2o`, `tova`, `keynorm`) only says how much each cached entry is worth.

After the prefill forward (which attends over the whole prompt) each layer keeps its ``budget`` best entries per KV
head; leaves with ``evicts_while_decoding`` then keep the cache at ``budget`` after every step. Kept entries keep
their original position ids (the decode loop passes positions explicitly, so RoPE stays right; nothing is
renumbered), while ``get_seq_length()`` counts entries, the index space of attention masks. Entries sit in
preallocated buffers edited in place (``slots``), so a decode step copies O(1) entries, not the cache; once a step
has evicted, slot order is no longer position order (attention reads positions, never the order).

Attention scores need the queries, which a cache ``update`` never sees: ``hooks.py`` recomputes them in forward
hooks on the attention modules and calls each layer's ``after_attention``; a lean one-token decode step
(strategies/kernels/lean_forward.py) hands its own query to ``attended`` instead, skipping transformers' forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from transformers import PreTrainedModel

from strategies.caches.eviction import slots
from strategies.caches.eviction.hooks import EvictionKVCache
from strategies.core.base import CacheStrategy, KVLayer, num_cache_layers

# Slots a one-token step needs beyond the budget (h2o, tova): the new entry goes there before its step evicts one.
# The spare slots are memory held, so tensors() reports them; one slot keeps that at 1/budget of the cache.
DECODE_MARGIN = 1


class EvictionLayer(KVLayer):
    """Entries live in preallocated buffers (``slots``): ``update`` writes new ones after the ``held`` kept ones, and
    a decode step's eviction moves survivors into the victims' slots, so no step copies the whole cache.
    ``keys``/``values``/``positions``/``accumulated`` are views of the held part (transformers and the scores read
    them); once a step has evicted, entries are no longer in position order."""

    lean_decode = True  # one-token steps: the lean forward hands the query to attended(), which evicts
    sees_queries = True

    def __init__(self, policy: EvictionCache, max_len: int = 0):
        super().__init__()
        self.policy = policy
        self.max_len = max_len  # tokens the caller will feed in all (new_cache's hint): sizes snapkv's decode room
        self.bufs: slots.Buffers = {}
        self.held = 0  # entries in the first slots of every row
        self.scored = 0  # entries whose attention mass is accumulated (h2o): the first ``scored`` slots
        self.fed = 0  # tokens of the last update: a step that evicts no more than that swaps them in place
        self.positions: torch.Tensor | None = None  # [batch, kv_heads, entries] original position ids, int32
        self.accumulated: torch.Tensor | None = None  # [batch, kv_heads, entries] attention mass (h2o)
        self.seen = 0  # tokens fed so far: the next token's position
        self.budget: int | None = None
        self.allowed = 0  # the most entries this layer may hold now; more means eviction did not happen
        self.gap_until = 0  # until seen reaches it (after a rollback) the newest positions may have gaps

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def _views(self) -> None:
        for name in ("keys", "values", "positions", "accumulated"):
            buf, held = self.bufs.get(name), self.scored if name == "accumulated" else self.held
            setattr(self, name, None if buf is None else buf[:, :, :held])

    def _writable(self) -> None:
        """Buffers made under inference_mode cannot be written in place outside it: copy them once if so."""
        if self.bufs and self.bufs["keys"].is_inference() and not torch.is_inference_mode_enabled():
            self.bufs = {name: buf.clone() for name, buf in self.bufs.items()}

    def _capacity(self, need: int) -> int:
        """Slots to allocate for ``need`` entries: the prompt exactly at prefill; then the budget and a margin for
        evicting leaves, or room for every token still to come (``max_len``) for those that evict only once."""
        if self.budget is None:
            return need
        if self.policy.evicts_while_decoding:
            return max(need, self.budget + DECODE_MARGIN)
        return max(need, self.held + max(0, self.max_len - self.seen))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        b, h, t, _ = key_states.shape
        new_pos = torch.arange(self.seen, self.seen + t, dtype=torch.int32, device=key_states.device)
        if not self.bufs:
            opts = dict(dtype=torch.int32, device=key_states.device)
            self.bufs = {"keys": key_states.new_empty(b, h, t, key_states.shape[-1]),
                         "values": value_states.new_empty(b, h, t, value_states.shape[-1]),
                         "positions": torch.empty(b, h, t, **opts)}
            self.is_initialized = True
        self._writable()
        if self.held + t > self.bufs["keys"].shape[2]:
            self.bufs = slots.resized(self.bufs, self.held, self._capacity(self.held + t))
        # in place after the kept entries: new tokens are the last entries while transformers attends (its causal
        # mask for a multi-token feed assumes so); eviction runs only after the attention module returned
        end = self.held + t
        self.bufs["keys"][:, :, self.held:end] = key_states
        self.bufs["values"][:, :, self.held:end] = value_states
        self.bufs["positions"][:, :, self.held:end] = new_pos
        self.held, self.fed, self.seen = end, t, self.seen + t
        self._views()
        # Prefill holds every entry until its hook evicts; after that only steps that do not evict add entries.
        self.allowed = self.held if self.budget is None else self.allowed + t
        return self.keys, self.values

    def accumulate(self, mass: torch.Tensor) -> torch.Tensor:
        """Add the newest queries' attention ``mass`` [b, h, held] to the running totals in place; the totals."""
        if "accumulated" not in self.bufs:  # from then on resized, selected and swapped with the others
            self.bufs["accumulated"] = mass.new_empty(*mass.shape[:2], self.bufs["keys"].shape[2])
        acc = self.bufs["accumulated"]
        acc[:, :, : self.scored] += mass[:, :, : self.scored]  # acc + mass: the same floats as mass + acc
        acc[:, :, self.scored : self.held] = mass[:, :, self.scored :]
        self.scored = self.held
        self._views()
        return self.accumulated

    def attention(self, queries: torch.Tensor, scaling: float) -> torch.Tensor:
        """Softmax attention [batch, kv_heads, queries, entries] of the last queries (averaged over each KV head's
        query group) over the kept keys, causal in original positions."""
        b, h, n, d = self.keys.shape
        w = queries.shape[2]
        q = queries.unflatten(1, (h, -1)).float()  # [b, h, group, w, d]
        logits = torch.einsum("bhgwd,bhnd->bhgwn", q, self.keys.float()) * scaling
        q_pos = torch.arange(self.seen - w, self.seen, device=q.device)
        future = self.positions[:, :, None, None, :] > q_pos[:, None]  # [b, h, 1, w, n]
        return logits.masked_fill(future, -math.inf).softmax(-1).mean(2)

    def attended(self, query: torch.Tensor, scaling: float) -> None:
        """A lean one-token step attended over this layer: its eviction, with the step's own query (nothing to
        recompute; the hook path recomputes it from the attention module's input)."""
        if self.budget is None:  # the prefill's hook never ran: leave it to check() to fail the row, not evict here
            return

        def attention(last: int) -> torch.Tensor:
            if last != 1:
                raise RuntimeError(f"a lean decode step fed 1 query, the eviction score asked for {last}")
            return self.attention(query, scaling)

        self.after_attention(attention)

    def after_attention(self, attention) -> None:
        """Called once the layer's attention module ran: evict down to the budget when the policy says so."""
        prefill = self.budget is None
        n = self.held
        if prefill:
            self.budget = self.policy.resolve_budget(n)
        if not (prefill or self.policy.evicts_while_decoding):
            return
        self.allowed = min(n, self.budget)
        if n <= self.budget:
            if self.policy.accumulates:
                self.policy.score(self, attention, prefill)  # keep the running totals current
            if prefill:  # the prompt's exact-size buffers get their decode room
                self.bufs = slots.resized(self.bufs, self.held, self._capacity(self.held))
                self._views()
            return
        scores = self.policy.score(self, attention, prefill).float().expand(self.positions.shape)
        protect = min(self.policy.protected(), self.budget)
        protected = self._newest(protect)
        k = n - self.budget
        if prefill or k > self.fed:  # a prompt (or a backlog): the general topk path
            # in position order, as before entries could be out of it: the same topk, ties included
            order = self.positions.argsort(-1)
            ranked = scores.masked_fill(protected, math.inf).gather(-1, order)
            keep = ranked.topk(self.budget, dim=-1).indices.sort(dim=-1).values  # [b, h, budget], in position order
            self._select(order.gather(-1, keep))
            return
        victims = slots.lowest(scores.masked_fill(protected, math.inf), self.positions, k)
        self.held = slots.swap_remove_(self.bufs, victims, self.held)
        self.scored = min(self.scored, self.held)  # h2o scored every entry before evicting
        self._views()

    def _newest(self, protect: int) -> torch.Tensor:
        """Mask [b, h, held] of the ``protect`` entries with the newest positions (never evicted). Without a
        rollback they are exactly positions >= seen - protect (each was protected since it was fed); for
        ``protect`` steps after one there may be gaps, and the cut is read off the positions."""
        if not protect:
            return torch.zeros_like(self.positions, dtype=torch.bool)
        if self.seen < self.gap_until:
            return self.positions >= self.positions.topk(protect, dim=-1).values[..., -1:]
        return self.positions >= self.seen - protect

    def _select(self, index: torch.Tensor) -> None:
        """Keep the slots ``index`` [b, h, m] (in that order), in fresh buffers sized for decoding."""
        self.held = index.shape[-1]
        self.scored = self.held if "accumulated" in self.bufs else 0
        self.bufs = slots.selected(self.bufs, index, self._capacity(self.held))
        self._views()

    def get_seq_length(self) -> int:
        return self.held

    def crop(self, tokens_to_remove: int) -> None:
        """Roll back: drop the ``-tokens_to_remove`` kept entries with the newest positions (the last ones, before
        entries went out of position order), swap-removed in place: every row drops as many, so rows keep one
        length, and the capacity a speculative step grew stays for the next one."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to drop")
        self.seen += tokens_to_remove
        self.allowed = max(0, self.allowed + tokens_to_remove)
        self.gap_until = self.seen + self.policy.protected()
        drop = min(-tokens_to_remove, self.held)
        if not drop:
            return
        self._writable()  # a rollback may run outside the inference mode the forwards ran in
        newest = self.positions.topk(drop, dim=-1).indices
        self.held = slots.swap_remove_(self.bufs, newest, self.held)
        self.scored = min(self.scored, self.held)
        self._views()

    def tensors(self) -> list[torch.Tensor]:
        return list(self.bufs.values())  # the whole buffers, spare slots included: memory really held

@dataclass
class EvictionCache(CacheStrategy):
    """``budget``: a fraction of the prompt (< 1) or a number of tokens (>= 1) kept per layer and KV head."""

    evicts_while_decoding: ClassVar[bool] = False
    accumulates: ClassVar[bool] = False  # score() must see every step, not only those that evict
    budget: float = field(default=0.5, metadata={
        "help": "entries kept per layer and KV head: a fraction (0, 1) of the prompt or a whole count of tokens >= 1"})

    def validate(self) -> None:
        if self.budget <= 0 or (self.budget >= 1 and self.budget != int(self.budget)):
            raise ValueError(f"budget must be a fraction in (0, 1) of the prompt or a whole number of tokens >= 1, "
                             f"got {self.budget}")

    def resolve_budget(self, prompt_len: int) -> int:
        return max(1, math.ceil(self.budget * prompt_len)) if self.budget < 1 else int(self.budget)

    def protected(self) -> int:
        """How many of the newest entries are never evicted."""
        return 0

    def score(self, layer: EvictionLayer, attention, prefill: bool) -> torch.Tensor:
        """Worth of each kept entry [batch, kv_heads or 1, entries]; higher is kept. ``attention(w)`` gives the
        last ``w`` queries' attention over the entries."""
        raise NotImplementedError

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> EvictionKVCache:
        return EvictionKVCache([EvictionLayer(self, max_len) for _ in range(num_cache_layers(model.config))], model)
