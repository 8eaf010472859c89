"""Perplexity that can be trusted (issue #16): paired bootstrap interval of Δppl, the long scoring window, output
lengths before EOS, and how the report shows them."""

from __future__ import annotations

import math

import torch

from bench.measure.output_length import length_columns
from bench.measure.quality import (
    LONG_WINDOW,
    perplexity,
    ppl_delta_ci,
    ppl_delta_pct,
    quality_window,
    scored_window,
    target_logprobs,
    tokens_before_eos,
)
from bench.results.quality_tables import pareto_front, quality_sections
from bench.workloads.catalog import get_workload


def _logprobs(n: int, vocab: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)).log_softmax(-1)


def test_delta_from_paired_tokens_is_the_perplexity_ratio():
    ref, ours = _logprobs(40, seed=1), _logprobs(40, seed=2)
    targets = torch.randint(0, 11, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    expected = 100 * (perplexity(ours, targets) - perplexity(ref, targets)) / perplexity(ref, targets)
    got = ppl_delta_pct(target_logprobs(ref, targets), target_logprobs(ours, targets))
    assert math.isclose(got, expected, rel_tol=1e-5)  # perplexity() averages in float32


def test_identical_scores_give_a_zero_interval_and_no_significance():
    ref = target_logprobs(_logprobs(64), list(range(11)) * 5 + list(range(9)))
    assert ppl_delta_ci(ref, ref.clone()) == (0.0, 0.0)
    assert "\n".join(quality_sections([_row("snapkv", 0.0, 0.0, 0.0)])).count("n.s.") == 2  # legend and row


def test_a_constant_shift_is_exact_at_both_ends_and_significant():
    """Every resample of a constant difference has the same mean, so both ends are the point estimate."""
    ref = torch.full((100,), -2.0, dtype=torch.float64)
    low, high = ppl_delta_ci(ref, ref - 0.01)
    assert math.isclose(low, 100 * math.expm1(0.01)) and math.isclose(high, low)
    assert math.isclose(ppl_delta_pct(ref, ref - 0.01), low)


def test_interval_is_seeded_and_holds_the_estimate():
    ref = target_logprobs(_logprobs(256, seed=4), [3] * 256)
    ours = ref + 0.05 * torch.randn(256, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    low, high = ppl_delta_ci(ref, ours)
    assert low < ppl_delta_pct(ref, ours) < high
    assert ppl_delta_ci(ref, ours) == (low, high)  # same seed, same resamples
    assert ppl_delta_ci(ref, ours, seed=1) != (low, high)


def test_block_resampling_widens_the_interval_of_correlated_losses():
    """Neighbouring tokens' losses move together; resampling positions one by one would understate the spread."""
    slow = torch.repeat_interleave(torch.randn(16, generator=torch.Generator().manual_seed(6), dtype=torch.float64), 64)
    ref = torch.full((1024,), -3.0, dtype=torch.float64)
    iid, blocks = ppl_delta_ci(ref, ref + 0.1 * slow, block=1), ppl_delta_ci(ref, ref + 0.1 * slow, block=64)
    assert blocks[1] - blocks[0] > iid[1] - iid[0]


def test_long_workloads_score_a_long_window_and_smoke_keeps_its_short_one(tiny):
    assert scored_window(32, 16) == (32, 16)
    assert scored_window(2048, 64) == (2048, LONG_WINDOW)
    smoke, long_doc = get_workload("smoke"), get_workload("long-doc")
    context, continuation = quality_window(long_doc, tiny.tokenizer)
    assert (len(context), len(continuation)) == (long_doc.quality_context, LONG_WINDOW)
    assert [len(x) for x in quality_window(smoke, tiny.tokenizer)] == [smoke.quality_context, smoke.quality_tokens]


def test_tokens_before_eos_count_up_to_the_first_eos_or_all():
    assert tokens_before_eos([[5, 6, 2, 7], [5, 6, 7], [2]], {2}) == [2, 3, 0]
    assert length_columns([[5, 6, 2, 7], [5, 6, 7]], {2, 9}, None) == {"tokens_before_eos": 2.5, "eos_rate": 0.5}
    assert length_columns([[5, 6, 2, 7], [5, 6, 7]], {2}, [[5, 2, 0, 0], [5, 6, 7]]) == {
        "tokens_before_eos": 2.5, "eos_rate": 0.5, "output_length_ratio": 5 / 4}
    assert length_columns([], {2}, None) == {}


def _row(strategy: str, delta: float, low: float, high: float, **extra) -> dict:
    return {"model": "m", "workload": "long-doc", "strategy": strategy, "params": "", "status": "ok",
            "ppl_delta_pct": delta, "ppl_delta_ci_low": low, "ppl_delta_ci_high": high, "ppl_tokens": 1024,
            "ppl_delta_significant": not low <= 0 <= high, **extra}


def test_report_marks_intervals_holding_zero_as_not_significant():
    text = "\n".join(quality_sections([_row("naive", 0, 0, 0), _row("tova", 1.5, 0.5, 2.5),
                                       _row("snapkv", -0.4, -1.1, 0.3)]))
    assert "## Long-context quality · m · long-doc" in text
    assert "| tova |  | 1024 | +1.50 | [+0.50, +2.50] | yes |" in text
    assert "| snapkv |  | 1024 | -0.40 | [-1.10, +0.30] | n.s. |" in text
    assert "| naive |" not in text  # the reference is 0 by construction


def test_report_shows_output_lengths_once_a_lossy_row_was_measured():
    reference = [_row("naive", 0, 0, 0, tokens_before_eos=12.0, eos_rate=1.0)]
    assert "Output length" not in "\n".join(quality_sections(reference))
    longer = reference + [_row("sinks", 1, 0.5, 2, output_length_ratio=1.25, tokens_before_eos=15.0, eos_rate=0.5)]
    text = "\n".join(quality_sections(longer))
    assert "| naive |  | 12.0 | 1.00 | reference |" in text and "| sinks |  | 15.0 | 0.50 | 1.250 |" in text


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(1.0, 0.9), (2.0, 0.9), (2.0, 0.5), (4.0, 0.7), (3.0, 0.6), (8.0, 0.1)]
    assert pareto_front(points) == [(2.0, 0.9), (4.0, 0.7), (8.0, 0.1)]


def test_smallest_budget_names_the_pick_or_every_setting_tried():
    from bench.results.quality_tables import smallest_budget

    def row(strategy, params, ratio, acc, lp, lossless=False):
        return {"strategy": strategy, "params": params, "compression_ratio": ratio, "lossless": lossless,
                "retrieval_acc": acc, "retrieval_acc@1024": acc, "answer_logprob@1024": lp, "retrieval_hit@1024:0": 1}

    full = row("full", "", 1.0, 1.0, -0.3, lossless=True)
    rows = [full, row("snapkv", "b=0.5", 2.0, 0.6, -3.0), row("snapkv", "b=0.9", 1.1, 1.0, -0.31),
            row("h2o", "b=0.5", 2.0, 0.0, -13.0), row("h2o", "b=0.9", 1.1, 0.8, -1.0)]
    text = "\n".join(smallest_budget(rows))
    assert "| snapkv | b=0.9 (1.1×) / b=0.9 (1.1×) |" in text
    assert "| h2o | none of b=0.5, b=0.9 kept it / none of b=0.5, b=0.9 kept it |" in text


def test_eos_allowed_pass_stops_where_the_banned_run_went_on(smol, smol_prompts):
    """The timed run bans EOS; the output-length pass lets the model choose it. Up to that EOS both are the same
    greedy tokens, and the banned run never holds one."""
    from bench.measure.output_length import generate_with_eos
    from bench.measure.quality import eos_ids, tokens_before_eos
    from strategies.core.sampling import GREEDY
    from strategies.registry import compose

    comp, eos = compose("full", {}), eos_ids(smol.model, smol.tokenizer)
    banned = comp.decoder.generate(smol.model, comp.cache_factory(smol.model), smol_prompts[:1], 40, GREEDY,
                                   lambda i, t: None).tokens
    from bench.workloads.prompts import Message, Workload

    asked = Workload("eos-test", "", (Message("What is the capital of France?"),), max_new_tokens=40)
    assert asked.prompts(smol.tokenizer) == smol_prompts[:1]
    allowed = generate_with_eos(comp, smol.model, asked, smol.tokenizer, 1)
    stop = tokens_before_eos(allowed, eos)[0]
    assert stop < 40 and allowed[0][stop] in eos  # "The capital of France is Paris." then EOS
    assert allowed[0][:stop] == banned[0][:stop] and not set(banned[0]) & eos


def test_rows_report_output_lengths_for_the_reference_and_lossy_caches(tmp_path, monkeypatch):
    from bench.cell import Cell, run_cell
    from bench.workloads import prompts

    chatty = prompts.Workload("eos-test", "one question, EOS allowed in the length pass",
                              (prompts.Message("What is the capital of France?"),), max_new_tokens=24,
                              quality_context=16, quality_tokens=8)
    monkeypatch.setitem(prompts.WORKLOADS, chatty.name, chatty)

    def cell(strategy, params=None):
        return run_cell(Cell(model="smollm2-135m", workload=chatty.name, strategy=strategy, params=params or {},
                             repeats=1, out_dir=str(tmp_path)))["row"]

    naive, full = cell("naive"), cell("full")
    window = cell("sliding-window", {"sliding-window": {"window": 4, "reserve": 0}})
    assert 0 < naive["tokens_before_eos"] < 24 and naive["eos_rate"] == 1.0 and "output_length_ratio" not in naive
    assert "output_length_ratio" not in full  # lossless: its tokens are checked equal to the reference's instead
    assert window["output_length_ratio"] == window["tokens_before_eos"] / naive["tokens_before_eos"]
    assert window["tokens_before_eos"] != naive["tokens_before_eos"]  # 4 entries of context: it does not stop alike
