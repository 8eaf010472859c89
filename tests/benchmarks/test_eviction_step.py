"""Micro-benchmark: one layer's decode step of the caches that evict while decoding (h2o, tova), before and after
the in-place layout (pytest-benchmark; `make test-bench` runs it, `make test` does not).

Shape: SmolLM2-135M's attention (9 query heads, 3 KV heads, head_dim 64), one request holding 1024 kept entries,
one new token per step: the cache update, the recomputed attention of the new query that scores the entries, and
the eviction of one entry. ``full``'s update (and its rollback) is the floor.

- ``before``: ``torch.cat`` of the new K/V (and positions) onto the whole cache, then topk over every entry, sort
  and gather of keys/values/positions/accumulated mass: several full copies per step;
- ``after``: ``EvictionLayer`` — the new entry written into a preallocated spare slot, the victim's slot filled
  with the last entry (swap-remove): O(1) entries copied; the attention over all keys remains.

`test_both_layouts_keep_the_same_entries` (also run here) checks they agree before anyone compares timings.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from strategies.caches.eviction.base import EvictionLayer
from strategies.caches.full import PreallocatedLayer
from strategies.registry import REGISTRY

HEADS, KV_HEADS, DIM, KEPT, WINDOW = 9, 3, 64, 1024, 16
SCALING = DIM**-0.5


def policy(name: str):
    return REGISTRY[name](budget=KEPT, **({"window": WINDOW} if name == "h2o" else {}))


def states(gen: torch.Generator, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, KV_HEADS, tokens, DIM, generator=gen), torch.randn(1, KV_HEADS, tokens, DIM, generator=gen)


class Before:
    """The per-step path the in-place layout replaced (cat, then topk + sort + gather), for h2o and tova."""

    def __init__(self, name: str, keys: torch.Tensor, values: torch.Tensor):
        self.name, self.keys, self.values = name, keys.clone(), values.clone()
        self.positions = torch.arange(keys.shape[2], dtype=torch.int32).expand(1, KV_HEADS, -1).clone()
        self.accumulated = torch.zeros(1, KV_HEADS, keys.shape[2]) if name == "h2o" else None
        self.seen = keys.shape[2]

    def step(self, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> None:
        self.keys, self.values = torch.cat([self.keys, key], 2), torch.cat([self.values, value], 2)
        pos = torch.full((1, KV_HEADS, 1), self.seen, dtype=torch.int32)
        self.positions, self.seen = torch.cat([self.positions, pos], -1), self.seen + 1
        q = query.unflatten(1, (KV_HEADS, -1))
        probs = (torch.einsum("bhgwd,bhnd->bhgwn", q, self.keys) * SCALING).softmax(-1).mean(2)
        if self.name == "h2o":
            mass = probs.sum(2)
            mass[..., :-1] += self.accumulated
            self.accumulated, protect = mass, WINDOW
            scores = mass.clone()
        else:
            scores, protect = probs[:, :, -1].mean(1, keepdim=True).expand(self.positions.shape).clone(), 1
        scores[..., -protect:] = math.inf
        keep = scores.topk(KEPT, dim=-1).indices.sort(dim=-1).values
        expand = keep.unsqueeze(-1).expand(*keep.shape, DIM)
        self.keys, self.values = self.keys.gather(2, expand), self.values.gather(2, expand)
        self.positions = self.positions.gather(2, keep)
        if self.accumulated is not None:
            self.accumulated = self.accumulated.gather(2, keep)


def after_layer(name: str, keys: torch.Tensor, values: torch.Tensor) -> EvictionLayer:
    layer = EvictionLayer(policy(name), max_len=keys.shape[2] + 1)
    layer.update(keys, values)
    query = torch.zeros(1, HEADS, keys.shape[2], DIM)  # h2o's prefill mass: zero queries attend uniformly
    layer.after_attention(lambda last: layer.attention(query[:, :, -last:], SCALING))
    return layer


def after_step(layer: EvictionLayer, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> None:
    layer.update(key, value)
    layer.after_attention(lambda last: layer.attention(query, SCALING))


def setup(name: str):
    torch.set_num_threads(1)  # one thread: less sensitive to the other processes of a shared machine
    gen = torch.Generator().manual_seed(0)
    keys, values = states(gen, KEPT)
    steps = [(*states(gen, 1), torch.randn(1, HEADS, 1, DIM, generator=gen)) for _ in range(8)]
    return keys, values, steps


@pytest.mark.parametrize("name", ["h2o", "tova"])
@torch.inference_mode()
def test_both_layouts_keep_the_same_entries(name):
    keys, values, steps = setup(name)
    before, after = Before(name, keys, values), after_layer(name, keys, values)
    if name == "h2o":
        before.accumulated = after.accumulated.clone()
    for _ in range(4):
        for key, value, query in steps:
            before.step(key, value, query)
            after_step(after, key, value, query)
    pos, order = after.positions.sort(-1)
    assert torch.equal(pos, before.positions)
    torch.testing.assert_close(after.keys.gather(2, order.unsqueeze(-1).expand(-1, -1, -1, DIM)), before.keys)


@pytest.mark.parametrize("variant", ["full", "h2o-before", "h2o-after", "tova-before", "tova-after"])
@torch.inference_mode()
def test_eviction_decode_step(benchmark, variant):
    name, _, layout = variant.partition("-")
    keys, values, steps = setup(name)
    benchmark.group = f"eviction decode step (one layer, {KEPT} kept, 3 KV heads x {DIM})"
    cycle = itertools.cycle(steps)
    if name == "full":
        layer = PreallocatedLayer(KEPT + 1)
        layer.update(keys, values)

        def full_step():
            key, value, _ = next(cycle)
            layer.update(key, value)
            layer.crop(-1)

        benchmark(torch.inference_mode()(full_step))
        return
    if layout == "before":
        before = Before(name, keys, values)
        benchmark(torch.inference_mode()(lambda: before.step(*next(cycle))))
    else:
        layer = after_layer(name, keys, values)
        benchmark(torch.inference_mode()(lambda: after_step(layer, *next(cycle))))
