"""Run settings: a TOML file and the equivalent flags give the same cells; flags override the file; every value is
checked before any cell starts (exit 2, one line naming the allowed values); every setting is in the cell key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.cli import build_parser, main
from bench.commands.run import settings_of
from bench.config import OPTIONS, ConfigError, from_sources, goodput_to_slo
from bench.grid import build_cells
from bench.key import SETTINGS, cell_key, row_key

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "bench" / "examples").glob("*.toml"))
TINY = ["--model", "random:tiny-llama", "--workload", "smoke,random:in=8,out=2,n=2"]


def cells_of(argv: list[str]) -> list:
    return build_cells(settings_of(build_parser().parse_args(["run", *argv])), check_context=False)


def grid(cells: list) -> list[str]:
    return [c.key for c in cells]


def test_a_config_file_and_the_same_flags_give_identical_cell_grids(tmp_path):
    (tmp_path / "sweep.toml").write_text('''
model = "random:tiny-llama"
workload = ["smoke", "random:in=8,out=2,n=2"]
strategies = "full,continuous"
param = ["continuous.max_batch=2,4"]
dtype = ["float32", "bfloat16"]
weights = "packed,stock"
request-rate = [1, 4.0, "inf"]
max_concurrency = [0, 2]
seed = 3
goodput = ["ttft:500", "tpot:50"]
''')
    flags = [*TINY, "--strategies", "full,continuous", "--param", "continuous.max_batch=2,4", "--dtype",
             "float32,bfloat16", "--weights", "packed,stock", "--request-rate", "1,4,inf", "--max-concurrency", "0,2",
             "--seed", "3", "--goodput", "ttft:500", "tpot:50"]
    from_file = cells_of(["--config", str(tmp_path / "sweep.toml")])
    from_flags = cells_of(flags)
    assert grid(from_file) == grid(from_flags)
    assert [c.__dict__ for c in from_file] == [c.__dict__ for c in from_flags]
    keys = grid(from_flags)
    assert len(keys) == len(set(keys))
    # smoke is a prompt workload: one cell per dtype × weights × strategy grid, not one per rate or concurrency
    smoke = [c for c in from_flags if c.workload == "smoke"]
    assert {c.request_rate for c in smoke} == {math.inf} and {c.max_concurrency for c in smoke} == {0}
    served = [c for c in from_flags if c.workload.startswith("random:") and c.strategy == "continuous"]
    assert len(served) == 2 * 2 * 2 * 3 * 2  # max_batch × dtype × weights × rate × concurrency
    assert {c.slo for c in from_flags} == {"ttft_ms=500,tpot_ms=50"}


def test_prompts_alone_run_only_the_file_and_with_workloads_join_them(tmp_path):
    assert from_sources({"prompts": "a.jsonl"}).workloads == [f"prompts:{Path('a.jsonl').resolve()}"]
    assert from_sources({"prompts": "a.jsonl", "workload": "smoke"}).workloads[0] == "smoke"


def test_flags_override_the_file(tmp_path):
    (tmp_path / "c.toml").write_text('model = "random:tiny-llama"\nworkload = "smoke"\nstrategies = ["full"]\n'
                                     'repeats = 5\ndtype = "bfloat16"\n')
    s = from_sources({"config": tmp_path / "c.toml", "repeats": "2"})
    assert s.repeats == 2 and s.dtype == ["bfloat16"] and s.strategies == ["full"]


@pytest.mark.parametrize("text, message", [
    ("modle = 'x'", "unknown key 'modle' in"),
    ("repeats = 'three'", "repeats = 'three' is not a whole number"),
    ("request-rate = ['fast']", "is not numbers"),
    ("resume = 1", "is not true or false"),
    ("model = [", "is not valid TOML"),
])
def test_bad_config_files_are_one_line(tmp_path, text, message):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        from_sources({"config": tmp_path / "c.toml"})
    assert "\n" not in str(e.value)
    if "unknown key" in message:
        assert "allowed: model, workload" in str(e.value) and "max-concurrency" in str(e.value)


@pytest.mark.parametrize("args, message", [
    (["--dtype", "float32,float8"], "unknown dtype 'float8'; allowed: float32, bfloat16, float16"),
    (["--weights", "packed,loose"], "unknown --weights 'loose'; allowed: packed, stock"),
    (["--request-rate", "1,0"], "--request-rate must be > 0"),
    (["--max-concurrency", "4,-1"], "--max-concurrency must be >= 0"),
    (["--max-concurrency", "two"], "--max-concurrency 'two' is not whole numbers"),
    (["--device", "tpu"], "unknown --device 'tpu'; allowed: cpu, cuda, cuda:N, mps"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--cell-timeout", "0"], "--cell-timeout must be > 0"),
    (["--goodput", "ttft:1", "latency:2"], "bad --goodput item 'latency:2'; allowed: ttft:MS, tpot:MS, e2el:MS"),
    (["--goodput", "ttft:1", "--slo", "ttft_ms=1"], "give --slo or --goodput, not both"),
    (["--workload", "random:in=8,out=2"], "lacks n; e.g. random:in=512,out=128,n=32"),
    (["--workload", "random:in=8,out=2,n=2,len=3"], "bad random workload option 'len=3'; allowed: in=N"),
    (["--config", "/no/such.toml"], "--config /no/such.toml not found"),
    (["--prompts", "/no/such.jsonl"], "--prompts file '/no/such.jsonl' not found"),
])
def test_every_value_is_checked_before_any_cell_one_line_exit_2(args, message, tmp_path, capsys):
    code = main(["run", *TINY, "--strategies", "full", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kvbench: error: ") and message in lines[0], err
    assert not (tmp_path / "x").exists()  # nothing started


def test_every_run_option_has_help_and_a_default():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    options = [a for a in run._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} == {o.name for o in OPTIONS}
    for a in options:
        assert a.help and "(default: " in a.help, a.dest
    text = run.format_help()
    assert "allowed workloads: smoke, chat-short" in text and "random:in=N,out=N,n=N" in text
    assert "allowed strategies: naive, full" in text and "continuous" in text


def test_every_key_setting_is_a_cell_field_and_a_run_option():
    from dataclasses import fields

    from bench.cell import Cell

    names = {f.name for f in fields(Cell)}
    assert set(SETTINGS) <= names
    assert set(SETTINGS) <= {o.name for o in OPTIONS}


def test_keys_differ_in_every_setting_and_default_cells_keep_their_old_key():
    from bench.cell import Cell

    base = Cell("m", "w", "full")
    assert base.key == "m|w|full|"  # what results files have always used
    changed = {"dtype": "bfloat16", "weights": "stock", "sampling": "temperature=0.7", "seed": 1, "request_rate": 4.0,
               "burstiness": 0.5, "max_concurrency": 8, "num_requests": 4, "threads": 1, "device": "cuda",
               "weight_quant": "int8", "target": "openai:http://127.0.0.1:8000/v1", "target_model": "m",
               "attn": "eager", "compile": "default"}
    assert set(changed) == set(SETTINGS)
    keys = {Cell("m", "w", "full", **{k: v}).key for k, v in changed.items()}
    assert len(keys) == len(changed) and base.key not in keys


def test_an_older_row_without_the_new_fields_keys_as_a_new_default_cell():
    old = {"model": "m", "workload": "w", "strategy": "full", "params": "", "sampling": "greedy", "seed": 0,
           "dtype": "float32", "device": "cpu", "weights": "stock", "threads": 2}
    assert row_key(old) == cell_key("m", "w", "full", "", {}) == "m|w|full|"
    assert row_key({**old, "cell_key": "m|w|full||request_rate=4"}) == "m|w|full||request_rate=4"
    assert row_key({**old, "dtype": "bfloat16"}) == "m|w|full||dtype=bfloat16"


def test_goodput_is_slo_as_vllm_spells_it():
    assert goodput_to_slo(["ttft:2000", "tpot:150", "e2el:9000"]) == "ttft_ms=2000,tpot_ms=150,e2el_ms=9000"
    from bench.scenarios.requests import Slo

    assert str(Slo.parse("ttft_ms=2000,tpot_ms=150,e2el_ms=9000")) == "ttft_ms=2000,tpot_ms=150,e2el_ms=9000"
    assert str(Slo.parse("")) == "ttft_ms=2000,tpot_ms=150"  # rows written before keep their slo text


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_config_makes_a_valid_grid_on_a_random_model(example):
    cells = build_cells(from_sources({"config": example, "model": "random:tiny-llama"}), check_context=False)
    assert cells and len({c.key for c in cells}) == len(cells)


def test_max_concurrency_keeps_at_most_n_requests_in_flight_and_times_from_sending():
    from bench.models import load_model
    from bench.scenarios.requests import timed_serve
    from bench.workloads.catalog import get_workload
    from strategies.core.sampling import Sampling
    from strategies.registry import compose

    loaded = load_model("random:tiny-llama")
    requests = get_workload("random:in=8,out=3,n=5").requests(loaded.tokenizer)  # all arrive at t=0
    comp = compose("continuous", {})
    free, _, _, _ = timed_serve(comp, loaded.model, requests, Sampling(), "cpu")
    out, served, _, _ = timed_serve(comp, loaded.model, requests, Sampling(), "cpu", max_concurrency=2)
    assert out.tokens == free.tokens and all(len(t) == 3 for t in out.tokens)  # gating changes timing, not tokens
    finish = sorted(r.stamps[-1] for r in served)
    for r in served:  # in flight at its first token: itself and at most one other
        in_flight = [s for s in served if s.stamps[0] <= r.stamps[0] < s.stamps[-1] or s is r]
        assert len(in_flight) <= 2
    sent = sorted(r.start for r in served)
    assert sent[:2] == [0.0, 0.0] and sent[2:] == finish[:3]  # each later request sent when one finished


def test_the_default_suite_runs_naive_and_a_representative_of_every_family():
    from bench.results.summary import FAMILIES, PEERS, family

    cells = build_cells(from_sources({"model": "random:tiny-llama"}), check_context=False)
    strategies = {c.strategy for c in cells}
    assert {"naive", "sequential"} <= strategies  # sequential: the request workload's token reference
    assert {family(s) for s in strategies - {"naive"}} == {name for name, _ in FAMILIES} | {PEERS}
    assert {"continuous+prefix-cache", "hf-generate", "hf-continuous"} <= strategies
    params = {c.strategy: c.params for c in cells}
    assert params["sinks"] == {"sinks": {"window": 32}} and params["speculative"] == {"speculative": {"draft": "int8"}}


def test_the_default_suites_params_yield_to_the_same_key_given_and_leave_with_given_strategies():
    cells = build_cells(from_sources({"model": "random:tiny-llama", "param": ["sinks.window=8"]}),
                        check_context=False)
    assert {c.strategy: c.params for c in cells}["sinks"] == {"sinks": {"window": 8}}
    cells = build_cells(from_sources({"model": "random:tiny-llama", "strategies": "sinks"}), check_context=False)
    assert [c.params for c in cells if c.strategy == "sinks"] == [{}]
