"""On the real embedded model: full and hf-generate reproduce naive greedy tokens; bytes; scoring reads the cache."""

from __future__ import annotations

import torch

from bench.scenarios.prompts import kv_bytes_closed_form, probe_cache
from bench.workloads.catalog import get_workload
from strategies.core.sampling import GREEDY
from strategies.registry import compose
from tests.helpers import generate, score

MAX_NEW = 24


def test_full_and_hf_generate_match_naive_greedy(smol, smol_prompts):
    naive = generate(smol.model, "naive", smol_prompts, MAX_NEW)
    assert all(len(t) == MAX_NEW for t in naive)
    assert generate(smol.model, "full", smol_prompts, MAX_NEW) == naive
    assert generate(smol.model, "hf-generate", smol_prompts, MAX_NEW) == naive


def test_full_cache_bytes_equal_closed_form_and_naive_holds_none(smol, smol_prompts):
    row = probe_cache(compose("full", {}), smol.model, smol_prompts, MAX_NEW, GREEDY)
    seq = max(map(len, smol_prompts)) + MAX_NEW - 1
    # 30 layers x 3 kv heads x 64 dims x 2 (K and V) x 4 bytes per token
    assert row["cache_bytes_theory"] == 2 * 30 * 3 * 64 * 4 * seq
    assert row["cache_bytes"] == row["cache_bytes_theory"] == row["cache_bytes_peak"]
    assert row["compression_ratio"] == 1.0
    assert probe_cache(compose("naive", {}), smol.model, smol_prompts, MAX_NEW, GREEDY)["cache_bytes"] == 0
    assert kv_bytes_closed_form(smol.model.config, 10, torch.float16) == 2 * 30 * 3 * 64 * 2 * 10


def test_scoring_through_full_cache_equals_one_forward(smol):
    context, continuation = get_workload("smoke").quality_text(smol.tokenizer)
    through_cache = score(smol.model, "full", context, continuation)
    one_forward = score(smol.model, "naive", context, continuation)
    assert through_cache.shape == (len(continuation), smol.model.config.vocab_size)
    torch.testing.assert_close(through_cache, one_forward, atol=2e-4, rtol=1e-4)
    assert torch.allclose(score(smol.model, "hf-generate", context, continuation), one_forward, atol=2e-4)


def test_scoring_really_reads_the_cache(smol, monkeypatch):
    """Corrupt what the cache returns for past tokens: a path that never read the cache would not notice."""
    from strategies.caches.full import PreallocatedLayer

    context, continuation = get_workload("smoke").quality_text(smol.tokenizer)
    clean = score(smol.model, "full", context, continuation)
    original = PreallocatedLayer.update

    def corrupted(self, k, v, *a, **kw):
        keys, values = original(self, k, v, *a, **kw)
        if k.shape[-2] == 1:  # decode steps: scramble the cached past, keep the new token
            values = torch.cat([values[:, :, :-1].flip(2), values[:, :, -1:]], dim=2)
        return keys, values

    monkeypatch.setattr(PreallocatedLayer, "update", corrupted)
    broken = score(smol.model, "full", context, continuation)
    assert torch.allclose(broken[0], clean[0])  # the prefill row does not read the decode path
    assert not torch.allclose(broken[1:], clean[1:], atol=1e-3)
