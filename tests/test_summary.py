"""The report's first screen (bench/results/summary.py) and the rate sweep's figure and max sustainable rate
(bench/results/rate_plots.py), on hand-made rows: what the report says must follow from the rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.results.rate_plots import max_sustainable_rate, meets_slo
from bench.results.report import write_report
from bench.results.summary import summary_rows

SLO = "ttft_ms=1000,tpot_ms=100"


def row(workload: str, strategy: str, **figures) -> dict:
    return {"model": "m", "workload": workload, "strategy": strategy, "params": "", "status": "ok", "error": "",
            "dtype": "float32", "device": "cpu", "threads": 2, "seed": 0, "sampling": "greedy", **figures}


def prompt_rows() -> list[dict]:
    """naive, full and three families on a short and a long prompt workload; ratios chosen to be exact in binary."""
    rows = []
    for workload, held in (("short", 1 << 20), ("long", 8 << 20)):
        rows += [
            row(workload, "naive", tokens_per_s=4.0, ttft_ms=80.0, tpot_ms=250.0, peak_rss_mb=900.0,
                ppl_delta_pct=0.0, greedy_agreement=1.0),
            row(workload, "full", tokens_per_s=16.0, ttft_ms=40.0, tpot_ms=60.0, cache_bytes=held,
                peak_rss_mb=1000.0, ppl_delta_pct=0.0, greedy_agreement=1.0),
            row(workload, "quant-int4", tokens_per_s=14.0, ttft_ms=42.0, tpot_ms=64.0, cache_bytes=held // 4,
                peak_rss_mb=960.0, ppl_delta_pct=3.5, greedy_agreement=0.25),
            # prompt lookup is fastest on the short workload: the summary must show it there
            row(workload, "prompt-lookup", tokens_per_s=40.0 if workload == "short" else 18.0, ttft_ms=40.0,
                tpot_ms=25.0, cache_bytes=held, peak_rss_mb=1000.0, ppl_delta_pct=0.0, greedy_agreement=1.0),
        ]
    rows.append(row("long", "snapkv", status="failed", error="eviction never ran: the hook saw no cache"))
    return rows


def write(run: Path, rows: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.json").write_text(json.dumps({"environment": {"cpu": "test"}, "meta": {}, "rows": rows,
                                                  "spread": {}, "samples": {}}))
    return run


def summary_of(text: str) -> str:
    return text.split("## Summary", 1)[1].split("\n## ", 1)[0]


def test_summary_opens_the_report_with_each_familys_ratios_on_its_showcase_workload(tmp_path):
    text = write_report(write(tmp_path / "run", prompt_rows())).read_text()
    assert text.index("## Summary") < text.index("## m · short")  # first, before any full table
    summary = summary_of(text)
    lines = {line.split(" | ")[1]: line for line in summary.splitlines() if line.startswith("| ")}
    # caches on the longest context (largest full cache), speculation where it is fastest
    assert "| quantized KV cache | quant-int4 | long | 3.50× | 0.88× | 42 (1.05×) | 64.0 (1.07×) | 2 (0.25×) |" \
           " 960 (-40) | +3.50 | 0.250 |" in summary
    assert lines["prompt-lookup"].startswith("| speculative decoding | prompt-lookup | short | 10.00× | 2.50× |")
    assert "| exact KV cache | full | long | 4.00× | 1.00× |" in summary
    assert "| snapkv | long | **failed** |" in summary and "eviction never ran" in summary
    assert "naive |" not in summary  # naive is what the others are divided by, not a line
    # the verdicts in words, from the same ratios; noise-level differences are not named
    assert "`quant-int4` buys 0.25× KV bytes, -40 MiB peak RSS; costs 0.88× tok/s, Δppl +3.5%, greedy agreement " \
           "0.25 (long)" in summary
    assert "`prompt-lookup` buys 2.50× tok/s, 0.42× TPOT; costs nothing beyond noise (short)" in summary
    assert "![Speed vs quality vs memory — m · long](pareto-m-long.png)" in summary
    assert (tmp_path / "run" / "pareto-m-long.png").stat().st_size > 5000


def test_summary_ratios_equal_the_rows_ratios():
    rows = prompt_rows()
    by = {(r["workload"], r["strategy"]): r for r in rows}
    for s in summary_rows(rows):
        if s["status"] != "ok":
            continue
        mine, full, naive = by[(s["workload"], s["strategy"])], by[(s["workload"], "full")], by[(s["workload"],
                                                                                                  "naive")]
        assert s["speed_vs_full"] == mine["tokens_per_s"] / full["tokens_per_s"]
        assert s["speed_vs_naive"] == mine["tokens_per_s"] / naive["tokens_per_s"]
        assert s["kv_vs_full"] == mine["cache_bytes"] / full["cache_bytes"]
        assert s["ttft_vs_full"] == mine["ttft_ms"] / full["ttft_ms"]


def serving(strategy: str, rate: float, ttft_p99: float, tpot_p99: float, goodput: float, **extra) -> dict:
    return row("mixed-chat", strategy, request_rate=rate, burstiness=1.0, num_requests=8, slo=SLO,
               goodput_rps=goodput, output_tokens_per_s=10 * goodput, tokens_per_s=10 * goodput,
               ttft_p50_ms=ttft_p99 / 2, ttft_p99_ms=ttft_p99, tpot_p50_ms=tpot_p99 / 2, tpot_p99_ms=tpot_p99,
               itl_p50_ms=tpot_p99 / 2, itl_p99_ms=tpot_p99, tpot_ms=tpot_p99 / 2, cache_bytes_peak=1 << 20, **extra)


def sweep_rows() -> list[dict]:
    return [
        # continuous keeps the SLO up to 4 req/s, misses it at inf
        serving("continuous", 1.0, 300, 50, 1.0), serving("continuous", 2.0, 500, 60, 2.0),
        serving("continuous", 4.0, 900, 90, 3.8), serving("continuous", math.inf, 4000, 120, 1.0),
        # sequential misses TTFT from 2 req/s; its pass at 4 is noise above a failure, not capacity
        serving("sequential", 1.0, 800, 40, 0.9), serving("sequential", 2.0, 3000, 40, 0.5),
        serving("sequential", 4.0, 900, 40, 0.5), serving("sequential", math.inf, 9000, 40, 0.2),
        # full is never within the SLO
        serving("full", 1.0, 2000, 40, 0.2), serving("full", 2.0, 4000, 40, 0.1),
    ]


def test_a_rate_sweep_names_the_max_sustainable_rate_and_draws_latency_and_goodput(tmp_path):
    text = write_report(write(tmp_path / "run", sweep_rows())).read_text()
    named = "`continuous` 4 req/s; `sequential` 1 req/s; `full` none (fails at its lowest rate)"
    assert f"Max sustainable rate on m · mixed-chat (SLO {SLO}, p99): {named}" in summary_of(text)
    assert f"**Max sustainable rate** under SLO {SLO}" in text and named in text.split("## m · mixed-chat")[1]
    assert "| continuous | 4 | yes | 3.80 | 38.0 | 450 / 900 | 45 / 90 | 45 / 90 |" in text
    assert "| continuous | inf | no | 1.00 |" in text
    assert "](rate-m-mixed-chat.png)" in text
    assert (tmp_path / "run" / "rate-m-mixed-chat.png").stat().st_size > 5000
    assert "rate req/s" in text.split("Serving (8 requests, rate 1, 2, 4, inf/s")[1]  # the table tells rates apart


def test_sustainable_rate_rules():
    assert meets_slo(serving("x", 1.0, 1000, 100, 1.0))  # at the target is within it
    assert not meets_slo(serving("x", 1.0, 1000.5, 100, 1.0))
    assert not meets_slo({**serving("x", 1.0, 10, 10, 1.0), "tpot_p99_ms": math.nan})  # unmeasured is not met
    assert meets_slo({**serving("x", 1.0, 5000, 10, 1.0), "slo": "ttft_ms=inf,tpot_ms=100"})  # inf bounds nothing
    line = [serving("x", r, 100, 10, 1.0) for r in (1.0, 2.0, math.inf)]
    assert max_sustainable_rate(line) == math.inf


def test_one_rate_per_line_is_not_a_sweep(tmp_path):
    rows = [serving("continuous", math.inf, 300, 50, 1.0), serving("sequential", math.inf, 300, 50, 1.0)]
    text = write_report(write(tmp_path / "run", rows)).read_text()
    assert "Max sustainable rate" not in text and "](rate-" not in text


def test_the_serving_header_says_how_many_requests_each_served(tmp_path):
    rows = [serving("continuous", math.inf, 900, 90, 1.0), serving("naive", math.inf, 9000, 400, 0.1)]
    rows[1]["num_requests"] = 2  # naive is O(n²): it serves a workload's first few requests
    text = write_report(write(tmp_path / "run", rows)).read_text()
    assert "Serving (8 requests (naive: the first 2), rate inf/s" in text
