"""Timing and quality arithmetic on known values (no clocks, no sleeps)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.measure.quality import agreement, mean_kl, perplexity
from bench.measure.timing import RequestTiming, percentile, spread, summarize_repeat


def test_request_timing_ttft_tpot_e2e():
    r = RequestTiming(10.0, (10.5, 10.6, 10.8, 11.1))
    assert r.ttft_s == pytest.approx(0.5)
    assert r.e2e_s == pytest.approx(1.1)
    assert r.tpot_s == pytest.approx(0.2)  # (1.1 - 0.5) / 3
    assert r.gaps_s == pytest.approx([0.1, 0.2, 0.3])


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
