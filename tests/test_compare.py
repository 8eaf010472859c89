"""`compare` rules on hand-made results: each metric kind, one-sided cells, environments, exit codes, bad input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.results.compare import BAD_INPUT, CURRENT_FAILED, PASS, REGRESSION, Options, compare
from bench.results.compare_table import to_markdown
from bench.results.metrics import ABSOLUTE, EXACT, INFO, QUALITY, RATIO, metric

ENV = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cores": 2, "gpu": "none", "python": "3.11.7",
       "torch_version": "2.13.0+cpu", "transformers_version": "5.23.0"}
KEY = "m|smoke|full|"


def row(strategy: str = "full", **figures) -> dict:
    # rows say whether their strategy is lossless (every strategy these tests use is)
    base = {"model": "m", "workload": "smoke", "strategy": strategy, "params": "", "lossless": True, "status": "ok",
            "error": "",
            "tokens_per_s": 100.0, "ttft_ms": 10.0, "cache_bytes": 4096, "speedup_vs_naive": 2.0, "ppl": 20.0,
            "ppl_delta_pct": 0.0, "kl_vs_naive": 0.0, "greedy_agreement": 1.0, "first_divergence": -1,
            "dtype": "float32", "device": "cpu", "threads": 2, "sampling": "greedy", "seed": 0}
    return {**base, **figures}


def run(*rows: dict, tokens_per_s: list[float] | None = None) -> dict:
    spread = {}
    if tokens_per_s:
        spread = {f"{r['model']}|{r['workload']}|{r['strategy']}|{r['params']}":
                  {"tokens_per_s": {"values": tokens_per_s}} for r in rows}
    return {"environment": dict(ENV), "rows": [dict(r) for r in rows], "spread": spread}


def verdicts(result, key: str = KEY) -> dict[str, str]:
    cell = next(c for c in result.cells if c.key == key)
    return {line.metric.name: line.verdict for line in cell.lines}


def test_metric_kinds_directions_and_units():
    assert (metric("tokens_per_s").kind, metric("tokens_per_s").direction) == (ABSOLUTE, "up")
    assert (metric("ttft_ms").kind, metric("ttft_ms").direction, metric("ttft_ms").unit) == (ABSOLUTE, "down", "ms")
    assert metric("cache_bytes").kind == EXACT and metric("cache_bytes").direction == "down"
    assert metric("speedup_vs_naive").kind == RATIO and metric("speedup_vs_hf").kind == RATIO
    assert metric("greedy_agreement").kind == QUALITY and metric("greedy_agreement", lossless=True).kind == EXACT
    assert metric("ttft_p99_ms").kind == ABSOLUTE and metric("blocks_used").kind == INFO


def test_identical_runs_pass():
    result = compare(run(row()), run(row()))
    assert result.exit_code() == PASS and set(verdicts(result).values()) == {"same"}


def test_exact_figures_any_change_is_a_regression_even_a_smaller_cache():
    result = compare(run(row()), run(row(cache_bytes=2048)))
    assert verdicts(result)["cache_bytes"] == "changed" and result.exit_code() == REGRESSION


def test_a_baseline_that_does_not_say_lossless_is_judged_by_the_current_row():
    old = {k: v for k, v in row().items() if k != "lossless"}  # written before rows said so
    assert verdicts(compare(run(old), run(row(greedy_agreement=0.995))))["greedy_agreement"] == "changed"
    unknown = compare(run(old), run({**old, "greedy_agreement": 0.995}))
    assert verdicts(unknown)["greedy_agreement"] == "same"  # neither side says: toleranced, never exact


def test_lossless_agreement_is_exact_lossy_agreement_is_toleranced():
    # The row says "full" is lossless: agreement 1.0 -> 0.995 fails however small.
    assert verdicts(compare(run(row()), run(row(greedy_agreement=0.995))))["greedy_agreement"] == "changed"
    lossy = {"strategy": "quant-int4", "lossless": False}
    key = "m|smoke|quant-int4|"
    ok = compare(run(row(**lossy)), run(row(**lossy, greedy_agreement=0.995)))
    assert verdicts(ok, key)["greedy_agreement"] == "same" and ok.exit_code() == PASS
    bad = compare(run(row(**lossy)), run(row(**lossy, greedy_agreement=0.95)))
    assert verdicts(bad, key)["greedy_agreement"] == "regression"


@pytest.mark.parametrize("figures, name, verdict", [
    ({"ppl": 20.1}, "ppl", "same"),  # +0.5 % < 1 %
    ({"ppl": 20.3}, "ppl", "regression"),  # +1.5 %
    ({"ppl": 19.5}, "ppl", "improved"),
    ({"ppl_delta_pct": 0.9}, "ppl_delta_pct", "same"),  # 0.9 pp <= 1 pp
    ({"ppl_delta_pct": 1.5}, "ppl_delta_pct", "regression"),
    ({"kl_vs_naive": 0.02}, "kl_vs_naive", "regression"),
])
def test_quality_beyond_tolerance(figures, name, verdict):
    assert verdicts(compare(run(row()), run(row(**figures)), Options(quality_tol=0.01)))[name] == verdict


def test_ratio_drop_beyond_tolerance_and_never_on_a_rise():
    assert verdicts(compare(run(row()), run(row(speedup_vs_naive=1.85))))["speedup_vs_naive"] == "same"  # -7.5 %
    result = compare(run(row()), run(row(speedup_vs_naive=1.7)))  # -15 %
    assert verdicts(result)["speedup_vs_naive"] == "regression" and result.exit_code() == REGRESSION
    assert verdicts(compare(run(row()), run(row(speedup_vs_naive=1.7)), Options(ratio_tol=0.2)))[
        "speedup_vs_naive"] == "same"
    assert verdicts(compare(run(row()), run(row(speedup_vs_naive=3.0))))["speedup_vs_naive"] == "improved"


def test_absolute_times_use_mann_whitney_and_gate_only_when_asked():
    fast, slow = [100.0, 101, 99, 100.5, 99.5, 100.2, 99.8], [80.0, 81, 79, 80.5, 79.5, 80.2, 79.8]
    base, cur = run(row(), tokens_per_s=fast), run(row(tokens_per_s=80.0), tokens_per_s=slow)
    result = compare(base, cur)
    assert verdicts(result)["tokens_per_s"] == "regression" and result.exit_code() == PASS  # reported, not gating
    assert compare(base, cur, Options(gate_absolute=True)).exit_code() == REGRESSION
    # 3 + 3 repeats: the smallest two-sided p is 0.1, so the test cannot reach 0.002.
    few = compare(run(row(), tokens_per_s=fast[:3]), run(row(tokens_per_s=80.0), tokens_per_s=slow[:3]),
                  Options(gate_absolute=True))
    assert verdicts(few)["tokens_per_s"] == "insufficient data" and few.exit_code() == PASS
    assert compare(run(row(), tokens_per_s=fast[:3]), run(row(tokens_per_s=80.0), tokens_per_s=slow[:3]),
                   Options(gate_absolute=True, strict=True)).exit_code() == REGRESSION
    # below the minimum factor (1.1×) a significant shift is still "same"
    near = [v * 0.95 for v in fast]
    assert verdicts(compare(base, run(row(tokens_per_s=95.0), tokens_per_s=near)))["tokens_per_s"] == "same"


def test_other_environment_marks_absolute_figures_not_comparable():
    other = run(row(tokens_per_s=10.0))
    other["environment"]["cpu"] = "Intel Xeon"
    result = compare(run(row()), other, Options(gate_absolute=True))
    assert verdicts(result)["tokens_per_s"] == "not comparable" and result.exit_code() == PASS
    assert result.env_diff == {"cpu": ("AMD EPYC", "Intel Xeon")}
    assert "not comparable" in to_markdown(result)


def test_other_python_makes_timings_and_quality_not_comparable_and_is_named():
    other = run(row(tokens_per_s=10.0, ppl=30.0, kl_vs_naive=0.5, cache_bytes=8192))
    other["environment"]["python"] = "3.12.1"
    result = compare(run(row()), other, Options(gate_absolute=True))
    assert result.env_diff == {"python": ("3.11.7", "3.12.1")}
    v = verdicts(result)
    # the quality text is the stdlib's docstrings: another Python scores other text, not a worse strategy
    assert v["tokens_per_s"] == v["ppl"] == v["kl_vs_naive"] == "not comparable"
    # exact figures still gate: a lossless strategy reproduces naive on any text
    assert v["greedy_agreement"] == "same" and v["cache_bytes"] == "changed" and result.exit_code() == REGRESSION
    lines = to_markdown(result).splitlines()
    assert "python: 3.11.7 → 3.12.1" in lines[2] and "absolute and quality" in lines[2]
    assert any("not comparable (different python" in line and "| ppl [ppl] |" in line for line in lines)


def test_other_cpu_capability_is_another_environment_for_timings_only():
    other = run(row(tokens_per_s=10.0, ppl=30.0))
    other["environment"]["cpu_capability"] = "AVX512"
    result = compare(run(row()), other, Options(gate_absolute=True))
    assert result.env_diff == {"cpu_capability": ("AVX2", "AVX512")}
    v = verdicts(result)
    assert v["tokens_per_s"] == "not comparable" and v["ppl"] == "regression" and result.exit_code() == REGRESSION
    assert "cpu_capability: AVX2 → AVX512" in to_markdown(result).splitlines()[2]


def test_a_key_an_old_baseline_does_not_record_is_unknown_not_different():
    fast, slow = [100.0, 101, 99, 100.5, 99.5, 100.2, 99.8], [80.0, 81, 79, 80.5, 79.5, 80.2, 79.8]
    old = run(row(), tokens_per_s=fast)
    del old["environment"]["cpu_capability"]
    result = compare(old, run(row(tokens_per_s=80.0), tokens_per_s=slow), Options(gate_absolute=True))
    assert result.env_diff == {} and result.env_unknown == {"cpu_capability": "baseline"}
    assert verdicts(result)["tokens_per_s"] == "regression"  # still judged: same machine as far as we know
    assert "cpu_capability (no baseline value)" in to_markdown(result).splitlines()[2]


def test_one_sided_cells_are_listed_and_a_lost_cell_fails():
    naive = row("naive", cache_bytes=0, speedup_vs_naive=1.0)
    result = compare(run(naive, row()), run(naive, row("hf-generate")))
    sides = {c.key: c.side for c in result.cells}
    assert sides == {"m|smoke|naive|": "both", KEY: "baseline-only", "m|smoke|hf-generate|": "current-only"}
    assert result.exit_code() == REGRESSION
    text = to_markdown(result)
    assert "m|smoke|full| — baseline-only" in text and "m|smoke|hf-generate| — current-only" in text
    assert compare(run(naive), run(naive, row("hf-generate"))).exit_code() == PASS  # a new cell alone passes


def test_ok_then_failed_is_a_regression_and_failed_cells_exit_3():
    result = compare(run(row()), run(row(status="failed", error="boom")))
    assert verdicts(result)["status"] == "regression" and result.exit_code() == CURRENT_FAILED


def test_a_run_that_measured_nothing_never_passes():
    skipped = compare(run(row(status="skipped")), run(row(status="skipped")))
    assert skipped.exit_code() == CURRENT_FAILED


def test_missing_figure_fails_for_gating_kinds():
    current = run(row())
    del current["rows"][0]["cache_bytes"]
    result = compare(run(row()), current)
    assert verdicts(result)["cache_bytes"] == "missing" and result.exit_code() == REGRESSION


def kvbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)


def test_cli_exit_codes_and_one_line_errors(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(run(row())))
    worse = tmp_path / "worse" / "results.json"
    worse.parent.mkdir()
    worse.write_text(json.dumps(run(row(cache_bytes=8192))))
    done = kvbench("compare", str(good), str(good), "--markdown", str(tmp_path / "c.md"))
    assert done.returncode == 0, done.stderr
    assert "exit 0: pass" in done.stdout and "cache_bytes" in (tmp_path / "c.md").read_text()
    done = kvbench("compare", str(good), str(worse.parent))
    assert done.returncode == 1 and "changed" in done.stdout
    (tmp_path / "torn.json").write_text(good.read_text()[:50])
    empty = copy.deepcopy(run(row()))
    empty["rows"] = []
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    for bad, message in [(tmp_path / "nope", "does not exist"), (tmp_path / "torn.json", "is not valid JSON"),
                         (tmp_path / "empty.json", "measured nothing")]:
        done = kvbench("compare", str(good), str(bad))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == BAD_INPUT and len(lines) == 1 and message in lines[0], done.stderr


def test_speedup_drop_within_the_repeats_own_noise_is_not_a_regression():
    naive = row("naive", cache_bytes=0, speedup_vs_naive=1.0)

    def with_spread(data, full, ref):
        data["spread"] = {KEY: {"tokens_per_s": {"values": full}}, "m|smoke|naive|": {"tokens_per_s": {"values": ref}}}
        return data

    base = with_spread(run(naive, row()), [190, 200, 210], [95, 100, 105])  # speedup 2.0, range 1.81..2.21
    noisy = with_spread(run(naive, row(speedup_vs_naive=1.6)), [120, 160, 200], [90, 100, 110])  # range 1.09..2.2
    result = compare(base, noisy)
    assert verdicts(result)["speedup_vs_naive"] == "within noise" and result.exit_code() == PASS
    slow = with_spread(run(naive, row(speedup_vs_naive=1.2)), [115, 120, 125], [95, 100, 105])  # range 1.1..1.3
    assert verdicts(compare(base, slow))["speedup_vs_naive"] == "regression"
