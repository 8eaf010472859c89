"""The step-wise continuous engine (strategies/scheduling/engine.py) on random:tiny-llama: its API (add, step,
abort, stats, per-request sampling, EOS), the packed forward and the padded fallback against `sequential`'s greedy
tokens (chunked prefill mixed with decodes, preemption), prefix reuse among co-arriving requests, pool sizing.
Exactness on the real model is in tests/test_serving.py."""

from __future__ import annotations

import math

import pytest

from strategies.core.requests import InstantClock, Request
from strategies.core.sampling import GREEDY, Sampling
from strategies.registry import compose
from strategies.scheduling import engine as engine_module
from strategies.scheduling.engine import Engine, RequestTooLarge

SHARED = list(range(100, 140))  # 40 tokens: 5 full blocks of 8


def requests() -> list[Request]:
    """6 requests of 12..62 prompt tokens, 3..8 new tokens; the last three share a 40-token prefix."""
    out = [Request(i, tuple(range(7 + i, 19 + 11 * i)), 3 + i) for i in range(3)]
    out += [Request(3 + i, tuple(SHARED + list(range(300 + 9 * i, 305 + 10 * i))), 4 + i) for i in range(3)]
    return out


def serve(model, spec: str, params: dict | None = None, reqs: list[Request] | None = None):
    comp = compose(spec, params or {})
    return comp.decoder.serve(model, comp.cache_factory(model), reqs or requests(), GREEDY, lambda i, t: None,
                              InstantClock(), cache=comp.cache)


@pytest.fixture(scope="module")
def reference(tiny) -> list[list[int]]:
    return serve(tiny.model, "sequential").tokens


def engine(model, prefix_cache: bool = False, **params) -> Engine:
    return Engine(model, compose("continuous", {"continuous": {"block_size": 8, **params}}).decoder, prefix_cache)


def drain(eng: Engine) -> dict:
    outs: dict = {}
    while eng.has_work:
        for o in eng.step():
            outs.setdefault(o.request_id, []).append(o)
    return outs


@pytest.mark.parametrize("spec,params", [
    ("continuous", {"max_prefill_tokens": 0}),  # whole prompts, all admitted requests in one forward
    ("continuous", {"max_prefill_tokens": 16, "max_batch": 3}),  # prompt chunks per step, mixed with decodes
    ("continuous+prefix-cache", {"max_prefill_tokens": 16}),
    ("continuous+prefix-cache", {"num_blocks": 9, "max_batch": 4}),  # too small a pool: preempt, recompute
])
def test_every_request_gets_the_sequential_tokens(tiny, reference, spec, params):
    out = serve(tiny.model, spec, {"continuous": {"block_size": 8, **params}, "prefix-cache": {"block_size": 8}})
    assert out.tokens == reference and not out.failures
    if "num_blocks" in params:
        assert out.stats["preemptions"] > 0 and out.stats["peak_blocks_used"] <= 9


def test_the_padded_fallback_gives_the_same_tokens(tiny, reference, monkeypatch):
    monkeypatch.setattr(engine_module, "supports_packed", lambda model: "forced for the test")
    out = serve(tiny.model, "continuous", {"continuous": {"block_size": 8}})
    assert out.tokens == reference


def test_co_arriving_requests_compute_a_shared_prefix_once(tiny, reference):
    shared = [Request(i, r.prompt, r.max_new_tokens) for i, r in enumerate(requests()[3:])]
    out = serve(tiny.model, "continuous+prefix-cache", {"continuous": {"block_size": 8}}, shared)
    assert out.tokens == reference[3:]
    prompt_tokens = sum(len(r.prompt) for r in shared)
    assert out.stats["prefix_hit_rate"] == pytest.approx(2 * len(SHARED) / prompt_tokens)  # all but the first


def test_steps_stream_tokens_with_finish_reasons_and_stats(tiny, reference):
    eng = engine(tiny.model, num_blocks=40)
    for r in requests():
        eng.add(f"req-{r.index}", r.prompt, r.max_new_tokens)
    assert eng.stats()["waiting"] == 6 and eng.stats()["blocks_total"] == 40
    outs = drain(eng)
    for r in requests():
        steps = outs[f"req-{r.index}"]
        assert [o.token for o in steps] == reference[r.index]
        assert [o.finish_reason for o in steps] == [None] * (r.max_new_tokens - 1) + ["length"]
        assert [o.finished for o in steps][-1]
    s = eng.stats()
    assert (s["running"], s["waiting"], s["blocks_used"]) == (0, 0, 0)
    assert s["tokens_generated"] == sum(r.max_new_tokens for r in requests())
    assert s["prompt_tokens"] == sum(len(r.prompt) for r in requests()) and s["cached_tokens"] == 0
    assert math.isnan(s["prefix_hit_rate"])


def test_abort_frees_the_blocks_at_once(tiny):
    eng = engine(tiny.model, num_blocks=40)
    eng.add("a", list(range(5, 40)), 20)
    eng.add("b", list(range(50, 60)), 20)
    eng.step()
    assert eng.stats()["blocks_used"] == 5 + 2
    eng.abort("a")
    eng.abort("never-added")  # ignored
    assert eng.stats()["blocks_used"] == 2 and eng.stats()["running"] == 1
    assert set(drain(eng)) == {"b"}


def test_eos_finishes_a_request_only_when_asked(tiny):
    first = engine(tiny.model, num_blocks=40)
    first.add(0, list(range(5, 30)), 3)
    token = drain(first)[0][0].token
    eng = engine(tiny.model, num_blocks=40)
    eng.eos = [token]  # make the greedy first token the model's EOS
    eng.add("stops", list(range(5, 30)), 3, stop_on_eos=True)
    eng.add("banned", list(range(5, 30)), 3)
    outs = drain(eng)
    assert [(o.token, o.finish_reason) for o in outs["stops"]] == [(token, "eos")]
    assert len(outs["banned"]) == 3 and token not in [o.token for o in outs["banned"]]


def test_each_request_samples_from_its_own_seeded_generator(tiny):
    def sampled(companions: int) -> list[int]:
        eng = engine(tiny.model, num_blocks=60)
        for i in range(companions):
            eng.add(i, list(range(9 + i, 30)), 5, sampling=Sampling(temperature=1.0, seed=i))
        eng.add("me", list(range(5, 30)), 5, sampling=Sampling(temperature=1.0, top_k=50, seed=7))
        return [o.token for o in drain(eng)["me"]]

    assert sampled(0) == sampled(3)  # its draws do not depend on who shares the batch


def test_bad_requests_are_refused_with_one_clear_line(tiny):
    eng = engine(tiny.model, num_blocks=4)
    with pytest.raises(RequestTooLarge, match=r"request 'big' needs 5 blocks of 8 tokens \(30 prompt \+ 10 new\) "
                                              r"but the pool has 4; raise num_blocks"):
        eng.add("big", list(range(30)), 10)
    eng.add("x", [1, 2, 3], 2)
    with pytest.raises(ValueError, match="request id 'x' is already in the engine"):
        eng.add("x", [1, 2, 3], 2)
    with pytest.raises(ValueError, match="empty prompt"):
        eng.add("y", [], 2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        eng.add("z", [1], 0)


def test_auto_pool_is_sized_to_the_workload_within_the_budget(tiny):
    strategy = compose("continuous", {"continuous": {"block_size": 8, "max_batch": 2}}).decoder
    reqs = requests()  # blocks needed: 2, 4, 5, 6, 7, 7 -> the two largest at once: 14
    assert strategy.pool_blocks(tiny.model, reqs) == 14
    assert strategy.pool_blocks(tiny.model, reqs, prefix_cache=True) == 14 + 47 // 8  # + the longest prompt's
    out = serve(tiny.model, "continuous", {"continuous": {"block_size": 8, "max_batch": 2}})
    assert out.stats["num_blocks"] == 14 and 0 < out.stats["peak_blocks_used"] <= 14
    tight = compose("continuous", {"continuous": {"block_size": 8, "kv_memory_mb": 0.01}}).decoder
    assert tight.pool_blocks(tiny.model, reqs) == tight.budget_blocks(tiny.model) < 14
    with pytest.raises(ValueError, match="continuous.num_blocks must be an integer >= 1 or auto, got 'lots'"):
        compose("continuous", {"continuous": {"num_blocks": "lots"}})
