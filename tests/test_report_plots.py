"""report.md embeds the figures the run has data for (PNG beside it, HTML twin); history.csv appends and plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from bench.results.history import COLUMNS, append_history, read_history
from bench.results.plots import _frontier
from bench.results.report import write_report
from bench.results.rows import row_key

REPO = Path(__file__).resolve().parent.parent
ENV = {"cpu": "AMD EPYC", "cores": 2, "gpu": "none", "python": "3.11", "torch_version": "2.13.0+cpu",
       "transformers_version": "5.23.0", "git_rev": "abc123", "platform": "Linux"}


def row(workload: str, strategy: str, tps: float, held: int | None, tokens: int, **extra) -> dict:
    r = {"model": "m", "workload": workload, "strategy": strategy, "params": "", "status": "ok", "error": "",
         "tokens_per_s": tps, "ppl_delta_pct": 0.0 if strategy != "lossy" else 2.5, "dtype": "float32",
         "device": "cpu", "threads": 2, "seed": 0, "sampling": "greedy", **extra}
    if held is not None:
        r.update(cache_bytes=held, cache_bytes_per_token=held / tokens if held else 0.0)
    return r


def write(run: Path, rows: list[dict]) -> Path:
    samples = {row_key(r): {"ttft_ms": [10.0, 12.0, 11.0], "itl_ms": [5.0, 6.0, 5.5]} for r in rows}
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.json").write_text(json.dumps({"environment": ENV, "meta": {}, "rows": rows, "spread": {},
                                                  "samples": samples}))
    return run


def test_report_embeds_every_figure_the_run_has_data_for(tmp_path):
    rows = [row(w, s, tps, held, n) for w, n in (("smoke", 44), ("chat-short", 180))
            for s, tps, held in (("naive", 5.0, 0), ("full", 20.0, 1000 * n), ("lossy", 30.0, 250 * n))]
    path = write_report(write(tmp_path / "run", rows))
    text = path.read_text()
    for png in ("pareto-m-smoke.png", "pareto-m-chat-short.png", "context-m.png", "latency-m-smoke.png"):
        assert f"]({png})" in text and (tmp_path / "run" / png).stat().st_size > 5000, png
    assert "](rate-" not in text  # no request workloads in this run
    assert "| cpu (model) | AMD EPYC |" in text and "| git_rev (revision) | abc123 |" in text
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<table>" in html and 'src="pareto-m-smoke.png"' in html


def test_request_rate_rows_get_a_latency_vs_rate_figure(tmp_path):
    rows = [row("mixed-chat", "full", 10.0 * rate, 1000, 10, request_rate=rate, ttft_p50_ms=20 * rate,
                ttft_p99_ms=50 * rate, itl_p50_ms=5.0, itl_p99_ms=9.0, params=f"rate={rate}")
            for rate in (1.0, 2.0, 4.0)]
    text = write_report(write(tmp_path / "run", rows)).read_text()
    assert "](rate-m-mixed-chat.png)" in text and (tmp_path / "run" / "rate-m-mixed-chat.png").exists()


def test_pareto_frontier_keeps_only_points_nothing_beats():
    points = [(10, 0.0), (20, 0.0), (30, 1.0), (25, 2.0), (5, -1.0)]
    assert _frontier(points) == [(5, -1.0), (20, 0.0), (30, 1.0)]


def test_history_appends_rows_with_revision_and_plots_them(tmp_path):
    history = tmp_path / "history.csv"
    rows = [row("smoke", "full", 20.0, 4400, 44), row("smoke", "naive", 5.0, 0, 44)]
    append_history(history, rows, "rev1", "run1")
    append_history(history, [dict(r, tokens_per_s=r["tokens_per_s"] * 1.5) for r in rows], "rev2", "run2")
    read = read_history(history)
    assert list(read[0]) == COLUMNS and [r["git_rev"] for r in read] == ["rev1", "rev1", "rev2", "rev2"]
    assert [float(r["tokens_per_s"]) for r in read] == [20.0, 5.0, 30.0, 7.5]
    out = tmp_path / "h.png"
    done = subprocess.run([sys.executable, "-m", "bench.cli", "history", "--file", str(history), "--metric",
                           "tokens_per_s", "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 5000
    bad = subprocess.run([sys.executable, "-m", "bench.cli", "history", "--file", str(tmp_path / "nope.csv")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert len(list(csv.reader(open(history)))) == 5  # header once
