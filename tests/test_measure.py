"""Timing and quality arithmetic on known values (no clocks, no sleeps)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.measure.quality import agreement, mean_kl, perplexity
from bench.measure.timing import RequestTiming, percentile, spread, summarize_repeat
from bench.scenarios.requests import ServedRequest, Slo, serving_metrics


def test_request_timing_ttft_tpot_e2e():
    r = RequestTiming(10.0, (10.5, 10.6, 10.8, 11.1))
    assert r.ttft_s == pytest.approx(0.5)
    assert r.e2e_s == pytest.approx(1.1)
    assert r.tpot_s == pytest.approx(0.2)  # (1.1 - 0.5) / 3
    assert r.gaps_s == pytest.approx([0.1, 0.2, 0.3])


def test_a_one_token_request_has_no_tpot_on_either_path():
    """TPOT = (E2E - TTFT) / (n - 1) is undefined for n = 1: nan on the prompt and the serving path alike, left out
    of the TPOT means (not counted as 0), and no TPOT target is missed by it."""
    assert math.isnan(RequestTiming(0.0, (0.5,)).tpot_s)
    assert math.isnan(ServedRequest(0.0, (0.5,), 7).tpot_s)
    assert summarize_repeat([RequestTiming(0.0, (0.5,)), RequestTiming(0.5, (0.7, 0.9))], 1.0)["tpot_ms"] == \
        pytest.approx(200)
    assert math.isnan(summarize_repeat([RequestTiming(0.0, (0.5,))], 1.0)["tpot_ms"])
    served = [ServedRequest(0.0, (0.5,), 7), ServedRequest(0.0, (0.2, 0.5, 0.8), 7)]
    m = serving_metrics(served, duration_s=1.0, slo=Slo(ttft_ms=1000, tpot_ms=400))
    assert m["tpot_mean_ms"] == pytest.approx(300) and m["tpot_p99_ms"] == pytest.approx(300)
    assert m["goodput_rps"] == 2.0


def test_summarize_repeat_uses_produced_tokens_over_wall_time():
    reqs = [RequestTiming(0.0, (0.1, 0.2)), RequestTiming(0.2, (0.4, 0.5, 0.6))]
    s = summarize_repeat(reqs, wall_s=0.625)
    assert s["tokens_per_s"] == pytest.approx(5 / 0.625)
    assert s["ttft_ms"] == pytest.approx(150)  # mean of 100 and 200
    assert s["itl_p50_ms"] == pytest.approx(100)
    assert s["e2e_ms"] == pytest.approx(300)


def test_percentile_and_spread():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    s = spread([10.0, 12.0, 11.0, 30.0])
    assert (s["n"], s["median"], s["min"], s["max"]) == (4, 11.5, 10.0, 30.0)
    assert s["cv"] > 0.4 and s["iqr"] == pytest.approx(percentile([10, 11, 12, 30], 75) - 10.75)
    assert spread([float("nan")])["n"] == 0


def test_agreement_and_first_divergence():
    assert agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]]) == (1.0, -1)
    frac, first = agreement([[1, 2, 3, 4], [4, 5, 6, 7]], [[1, 2, 9, 4], [4, 5, 6, 0]])
    assert first == 2 and frac == pytest.approx((2 + 3) / 8)


def test_perplexity_and_kl():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    assert perplexity(logprobs, [0, 1]) == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.8)) / 2))
    assert mean_kl(logprobs, logprobs) == pytest.approx(0.0)
    other = torch.log(torch.tensor([[1 / 3] * 3, [1 / 3] * 3]))
    expected = sum(p * math.log(p * 3) for p in (0.5, 0.25, 0.25)) + sum(p * math.log(p * 3) for p in (0.1, 0.8, 0.1))
    assert mean_kl(logprobs, other) == pytest.approx(expected / 2)


def test_batched_prompts_start_together_and_sequential_ones_one_after_another():
    """A batching decoder interleaves its prompts' tokens: each request started with the pass (TTFT >= 0), not
    when the previous request finished (which gave negative TTFTs to continuous on prompt workloads)."""
    from types import SimpleNamespace

    from bench.scenarios.prompts import timed_run

    def decoder(interleave: bool):
        def generate(model, cache, prompts, max_new, sampling, emit):
            order = [(i, t) for t in range(max_new) for i in range(len(prompts))] if interleave else \
                [(i, t) for i in range(len(prompts)) for t in range(max_new)]
            for i, _ in order:
                emit(i, [7])
            return SimpleNamespace(tokens=[[7] * max_new for _ in prompts], stats={})
        return SimpleNamespace(decoder=SimpleNamespace(generate=generate), cache_factory=lambda model: None)

    for interleave in (True, False):
        _, figures, timings = timed_run(decoder(interleave), None, [[1], [2], [3]], 4, None, "cpu")
        assert all(t.ttft_s >= 0 for t in timings)
        starts = {t.start for t in timings}
        assert (len(starts) == 1) == interleave
