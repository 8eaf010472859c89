"""Retrieval workloads and their scores through each strategy's own cache (issue #16): the prompts built offline,
exact match and answer log-prob, lossless strategies equal to the reference, the cell's columns and the report."""

from __future__ import annotations

import pytest

from bench.cell import Cell, run_cell
from bench.measure.retrieval import compare_with_reference, is_hit, retrieval_columns, score_cases
from bench.results.quality_plots import quality_figures
from bench.results.quality_tables import quality_sections
from bench.results.report import render
from bench.workloads import retrieval
from bench.workloads.retrieval import RetrievalWorkload, build_case
from tests.helpers import prepared

TINY = RetrievalWorkload("needle-test", "tiny needle grid for tests", lengths=(40, 80), depths=(0, 100),
                         max_new_tokens=4, quality_context=16, quality_tokens=8)


def test_cases_are_seeded_and_put_the_fact_where_asked(tiny):
    tok = tiny.tokenizer
    first, again = build_case(tok, 300, 0, seed=0), build_case(tok, 300, 0, seed=0)
    assert first == again and build_case(tok, 300, 0, seed=1).answer != first.answer
    for depth in (0, 50, 100):
        case = build_case(tok, 300, depth, seed=0)
        text = tok.decode(case.prompt)
        fact = f"is {case.answer}."
        where = text.index(fact) / text.index("What is the special magic number")
        assert abs(where - depth / 100) < 0.2, (depth, where)
        assert text.endswith(" is") and tok.decode(case.answer_ids) == f" {case.answer}"


def test_multi_key_hides_distractors_under_other_keys(tiny):
    case = build_case(tiny.tokenizer, 300, 50, seed=0, distractors=3)
    text = tiny.tokenizer.decode(case.prompt)
    facts = [s for s in text.split(". ") if "The special magic number for" in s and "is " in s]
    assert len({s.split(" for ")[1].split(" is")[0] for s in facts}) >= 4  # four keys, one asked
    assert text.count(f"is {case.answer}.") == 1


def test_hit_is_the_whole_number_on_the_first_line():
    assert is_hit(" 482913.", "482913") and is_hit("482913, as stated", "482913")
    assert not is_hit(" 4829130", "482913") and not is_hit("\nunknown\n482913", "482913")
    assert not is_hit("", "482913")


def test_columns_per_length_and_case_and_the_reference_check():
    results = [{"length": 40, "depth": 0, "hit": True, "logprob": -1.0},
               {"length": 40, "depth": 100, "hit": False, "logprob": -3.0},
               {"length": 80, "depth": 0, "hit": True, "logprob": -2.0}]
    row = retrieval_columns(results)
    assert row["retrieval_cases"] == 3 and row["retrieval_acc@40"] == 0.5 and row["answer_logprob@40"] == -2.0
    assert row["retrieval_hit@40:100"] == 0.0 and row["answer_logprob@80:0"] == -2.0
    assert compare_with_reference(results, results[:2]) is None
    moved = [dict(results[0], logprob=-1.5)] + results[1:]
    assert compare_with_reference(moved, results) == ("answer log-prob at length 40 depth 0%: -1.5000 but the "
                                                      "reference's -1.0000")
    assert "hit=False but the reference's hit=True" in compare_with_reference([dict(results[0], hit=False)], results)


def _scores(loaded, spec: str, cases, params=None):
    comp = prepared(loaded.model, spec, params)
    tokens = comp.decoder.generate(loaded.model, comp.cache_factory(loaded.model), [c.prompt for c in cases], 4,
                                   _greedy(), lambda i, t: None).tokens
    return score_cases(cases, tokens, loaded.tokenizer, lambda p, a: comp.decoder.score(
        loaded.model, comp.cache_factory(loaded.model), p, a))


def _greedy():
    from strategies.core.sampling import GREEDY
    return GREEDY


def test_lossless_strategies_score_exactly_the_reference_and_a_window_reads_its_own_cache(tiny):
    cases = TINY.cases(tiny.tokenizer)[:2]  # the shorter haystack, needle first and last
    reference = _scores(tiny, "naive", cases)
    for spec in ("full", "paged", "static", "prompt-lookup"):
        got = _scores(tiny, spec, cases)
        assert [r["generated"] for r in got] == [r["generated"] for r in reference], spec
        assert compare_with_reference(got, reference, atol=1e-4) is None, spec
    window = _scores(tiny, "sliding-window", cases, {"sliding-window": {"window": 8, "reserve": 0}})
    assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(window, reference)) > 1e-3


def test_real_model_full_scores_exactly_naive(smol):
    """One short real case: a 160-token haystack, the needle in the middle."""
    case = build_case(smol.tokenizer, 160, 50, seed=0)
    naive, full = _scores(smol, "naive", [case]), _scores(smol, "full", [case])
    assert full[0]["generated"] == naive[0]["generated"]
    assert compare_with_reference(full, naive, atol=1e-3) is None


@pytest.fixture
def tiny_workload(monkeypatch):
    monkeypatch.setitem(retrieval.RETRIEVAL_WORKLOADS, TINY.name, TINY)


def test_cells_carry_retrieval_columns_and_the_report_draws_them(tmp_path, tiny_workload):
    def cell(strategy, params=None):
        return run_cell(Cell(model="random:tiny-llama", workload=TINY.name, strategy=strategy, params=params or {},
                             repeats=1, out_dir=str(tmp_path)))["row"]

    naive, full = cell("naive"), cell("full")
    window = cell("sliding-window", {"sliding-window": {"window": 16, "reserve": 0}})
    assert naive["retrieval_cases"] == 1 and full["retrieval_cases"] == window["retrieval_cases"] == 4
    assert full["status"] == "ok" and "retrieval_mismatch" not in full
    assert full["answer_logprob@40:0"] == pytest.approx(naive["answer_logprob@40:0"], abs=1e-4)
    assert {"ppl_delta_ci_low", "ppl_delta_ci_high", "ppl_delta_significant"} <= set(full)
    assert "tokens_before_eos" not in full  # no output-length pass on retrieval: the answers are a few digits
    text = "\n".join(quality_sections([naive, full, window]))
    assert "## Long-context quality · random:tiny-llama · needle-test" in text
    assert "| sliding-window | sliding-window.reserve=0;sliding-window.window=16 |" in text
    assert "Most compressed setting keeping ≥ 95% of `full`'s retrieval" in text
    assert "## Long-context quality · random:tiny-llama · needle-test" in render({"rows": [naive, full, window]})
    figures = quality_figures({"rows": [naive, full, window]}, tmp_path)
    assert [name for _, name in figures] == ["compression_random_tiny-llama_needle-test.png",
                                             "needle_random_tiny-llama_needle-test.png"]
    assert all((tmp_path / name).stat().st_size > 0 for _, name in figures)
