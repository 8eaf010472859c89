"""Request workloads and the strategies that serve them: arrivals, metrics, and per-request exactness.

Exactness is against `sequential` (full cache, one request at a time), on the real embedded model under greedy,
with 8 requests of different lengths arriving at different times (a simulated arrival clock keeps it fast and
deterministic: every read of ``now()`` advances it, so requests arrive while others are being served).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.scenarios.requests import ServedRequest, Slo, serving_metrics
from bench.workloads.requests import arrival_offsets
from bench.workloads.text import CHAT_PROMPTS, encode_prompt, prose_tokens
from strategies.caches.block_pool import BlockPool
from strategies.core.requests import Request
from strategies.core.sampling import GREEDY, eos_ids
from strategies.registry import compose
from strategies.scheduling.scheduler import Scheduler, Sequence


class SimClock:
    """Arrival clock for tests: each ``now()`` advances ``tick`` seconds; ``wait_until`` jumps."""

    def __init__(self, tick: float = 0.05):
        self.t, self.tick = 0.0, tick

    def now(self) -> float:
        self.t += self.tick
        return self.t

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)


def serve(model, spec: str, requests, params=None):
    comp = compose(spec, params or {})
    out = comp.decoder.serve(model, comp.cache_factory(model), requests, GREEDY, lambda i, t: None, SimClock(),
                             cache=comp.cache)
    return out.tokens, out.stats, out.failures


@pytest.fixture(scope="module")
def requests(smol) -> list[Request]:
    """8 requests, prompts of ~30 to ~110 tokens, 3 to 10 new tokens, arriving 0.1 s apart."""
    tok, out = smol.tokenizer, []
    for i in range(8):
        text = CHAT_PROMPTS[i] if i % 2 else tok.decode(prose_tokens(tok, 200 * i, 12 * i)) + "\n\n" + CHAT_PROMPTS[i]
        out.append(Request(i, tuple(encode_prompt(tok, text)), 3 + i, 0.1 * i))
    assert len({len(r.prompt) for r in out}) == 8
    return out


@pytest.fixture(scope="module")
def reference(smol, requests) -> list[list[int]]:
    tokens, _, _ = serve(smol.model, "sequential", requests)
    assert [len(t) for t in tokens] == [r.max_new_tokens for r in requests]
    return tokens


@pytest.mark.parametrize("spec,params", [
    ("continuous", {"continuous": {"max_batch": 4, "block_size": 16}}),
    ("continuous+prefix-cache", {"continuous": {"max_batch": 4, "block_size": 16, "chunked_prefill": 32}}),
    ("static-batch", {"static-batch": {"batch_size": 3}}),
])
def test_each_request_gets_exactly_the_sequential_tokens(smol, requests, reference, spec, params):
    tokens, figures, failures = serve(smol.model, spec, requests, params)
    assert not failures
    assert tokens == reference
    if spec.startswith("continuous"):
        assert 0 < figures["peak_blocks_used"] <= figures["num_blocks"]


def test_preemption_then_resumption_gives_identical_tokens(smol, requests, reference):
    # 8-token blocks, 18 of them: the longest request (~115 tokens) fits alone, four at once do not.
    tokens, figures, failures = serve(smol.model, "continuous", requests,
                                      {"continuous": {"max_batch": 4, "block_size": 8, "num_blocks": 18}})
    assert not failures
    assert figures["preemptions"] > 0
    assert figures["peak_blocks_used"] <= 18
    assert tokens == reference


def test_prefix_cache_second_identical_prompt_reuses_every_full_block(smol, requests):
    block = 8  # a prompt that is not a multiple of 8 tokens: every full block can be shared
    prompt = min((r.prompt for r in requests if len(r.prompt) % block), key=len)
    twice = [Request(0, prompt, 4, 0.0), Request(1, prompt, 4, 0.0)]
    tokens, figures, _ = serve(smol.model, "sequential+prefix-cache", twice, {"prefix-cache": {"block_size": block}})
    assert tokens[0] == tokens[1]
    full_blocks = len(prompt) // block
    assert figures["prefix_hit_rate"] == pytest.approx(full_blocks * block / (2 * len(prompt)))


def test_a_pool_too_small_for_a_request_fails_it_clearly_and_serves_the_rest(tiny):
    reqs = [Request(0, tuple(range(5, 25)), 4), Request(1, tuple(range(5, 105)), 4, 0.1)]
    tokens, _, failures = serve(tiny.model, "continuous", reqs, {"continuous": {"block_size": 8, "num_blocks": 6}})
    assert len(tokens[0]) == 4 and tokens[1] == []
    assert failures == {1: "request 1 needs 13 blocks of 8 tokens (100 prompt + 4 new) but the pool has 6; "
                           "raise num_blocks"}


def test_scheduler_never_exceeds_num_blocks_and_finishes_everything():
    """Drive the scheduler alone (fake tokens) through heavy contention: every step's blocks fit the pool,
    every running sequence holds the blocks its tokens need, and every request finishes."""
    rng = np.random.default_rng(0)
    pool = BlockPool(num_blocks=12, block_size=4, num_layers=1, kv_heads=1, head_dim=1)
    sched = Scheduler(pool, max_batch=6)
    reqs = [Request(i, tuple(rng.integers(0, 100, int(rng.integers(1, 20))).tolist()), int(rng.integers(1, 12)))
            for i in range(30)]
    for r in reqs:
        sched.check_fits(r)
        sched.waiting.append(Sequence(r, list(r.prompt)))
    finished, steps = 0, 0
    while sched.running or sched.waiting:
        steps += 1
        assert steps < 10_000, "scheduler made no progress"
        running = sched.schedule()
        assert running, "nothing scheduled while requests wait"
        assert pool.num_used_blocks <= pool.num_blocks
        assert sum(len(s.blocks) for s in running) == pool.num_used_blocks  # no sharing without a prefix index
        for seq in running:
            assert len(seq.blocks) * 4 >= len(seq.tokens)
            seq.num_computed = len(seq.tokens)
            seq.tokens.append(0)
            if seq.is_finished:
                sched.finish(seq)
                finished += 1
    assert finished == 30 and pool.num_free_blocks == 12 and sched.num_preemptions > 0


@pytest.mark.parametrize("burstiness", [1.0, 0.25, 4.0])
def test_arrivals_have_the_requested_rate_and_burstiness(burstiness):
    rate, n = 5.0, 20_000
    times = arrival_offsets(n + 1, rate, burstiness, seed=1)
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    cv = 1 / math.sqrt(burstiness)
    assert gaps.mean() == pytest.approx(1 / rate, rel=4 * cv / math.sqrt(n))  # within 4 standard errors
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)
    fitted = stats.kstest(gaps, "gamma", args=(burstiness, 0, 1 / (rate * burstiness)))
    assert fitted.pvalue > 1e-3
    assert arrival_offsets(3, math.inf) == [0.0, 0.0, 0.0]
    assert arrival_offsets(n + 1, rate, burstiness, seed=1) == times  # seeded
    with pytest.raises(ValueError, match="--burstiness must be > 0"):
        arrival_offsets(3, rate, 0)


def test_serving_metrics_are_relative_to_arrival():
    # Request A arrives at 0 and gets tokens at 1.0, 1.5, 2.0; B arrives at 1.0, tokens at 1.2, 1.4.
    served = [ServedRequest(0.0, (1.0, 1.5, 2.0), 10), ServedRequest(1.0, (1.2, 1.4), 20)]
    m = serving_metrics(served, duration_s=2.0, slo=Slo(ttft_ms=500, tpot_ms=1000))
    assert m["ttft_p50_ms"] == pytest.approx(600) and m["ttft_mean_ms"] == pytest.approx(600)
    assert m["tpot_mean_ms"] == pytest.approx((500 + 200) / 2)
    assert m["e2e_p99_ms"] == pytest.approx(2000 - 0.01 * 1600)
    assert m["output_tokens_per_s"] == 2.5 and m["total_tokens_per_s"] == 17.5
    assert m["request_throughput_rps"] == 1.0
    assert m["goodput_rps"] == 0.5  # only B meets TTFT ≤ 500 ms
    assert Slo.parse("ttft_ms=100") == Slo(100, math.inf)
    with pytest.raises(ValueError, match="allowed: ttft_ms, tpot_ms"):
        Slo.parse("latency=3")


def test_cli_serves_a_request_workload_end_to_end(tmp_path):
    """The real CLI on a tiny random model: sequential is added as the token reference, the prefix cache hits on
    the shared system prompt, the serving columns and the serving table are written."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "random:tiny-llama", "--workload",
                           "shared-prefix", "--num-requests", "4", "--strategies", "continuous+prefix-cache",
                           "--request-rate", "50",
                           "--slo", "ttft_ms=60000,tpot_ms=60000", "--repeats", "1", "--no-quality",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["strategy"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert list(rows) == ["sequential", "continuous+prefix-cache"]
    row = rows["continuous+prefix-cache"]
    # tokens are checked against sequential even without quality scoring
    assert row["status"] == "ok" and row["greedy_agreement"] == "1" and row["num_requests"] == "4"
    assert float(row["prefix_hit_rate"]) > 0.5  # ~90% of every prompt is the shared system prompt
    assert float(row["goodput_rps"]) == float(row["request_throughput_rps"]) > 0  # generous SLO: all meet it
    for column in ("ttft_p99_ms", "tpot_p90_ms", "itl_p50_ms", "e2e_mean_ms", "output_tokens_per_s",
                   "total_tokens_per_s", "peak_blocks_used", "block_utilisation", "preemptions", "cache_bytes_peak"):
        assert row[column] != "", column
    assert "Serving (4 requests, rate 50/s" in (tmp_path / "report.md").read_text()


def test_hf_continuous_never_chooses_eos_and_gives_the_sequential_tokens(smol):
    # Requests 1 and 5 of `assistant` reach a position where EOS is the model's top choice (at 58 and 50): with EOS
    # merely not ending a request, transformers' engine emitted it and went on from there (agreement < 1).
    from bench.workloads.catalog import get_workload

    chosen = get_workload("assistant").requests(smol.tokenizer)
    chosen = [Request(i, chosen[k].prompt, chosen[k].max_new_tokens, 0.0) for i, k in enumerate((1, 5))]
    reference, _, _ = serve(smol.model, "sequential", chosen)
    tokens, _, failures = serve(smol.model, "hf-continuous", chosen)
    assert not failures and tokens == reference
    assert not set(eos_ids(smol.model)) & {t for row in tokens for t in row}
