"""The real CLI end to end: files and columns written, errors exit 2 with one line, resume and timeouts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.results.rows import COLUMNS

KVBENCH = [sys.executable, "-m", "bench.cli"]


def kvbench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*KVBENCH, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    done = kvbench("run", "--workload", "smoke", "--strategies", "full,hf-generate", "--repeats", "2",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_smoke_run_writes_csv_json_markdown_with_every_column(smoke_run):
    rows = list(csv.DictReader(open(smoke_run / "results.csv")))
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS
    assert [r["strategy"] for r in rows] == ["naive", "full", "hf-generate"]  # naive added and run first
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert float(r["tokens_per_s"]) > 0 and float(r["ttft_ms"]) > 0
        assert r["greedy_agreement"] == "1" and r["first_divergence"] == "-1"
        assert r["model"] == "smollm2-135m" and r["dtype"] == "float32" and r["device"] == "cpu"
        assert r["torch_version"] and r["transformers_version"] and r["git_rev"] and r["seed"] == "0"
    assert [r["weights"] for r in rows] == ["packed", "packed", "stock"]  # the peer runs transformers as shipped
    full = rows[1]
    assert full["cache_bytes"] == full["cache_bytes_theory"] and int(full["cache_bytes"]) > 0
    assert rows[0]["cache_bytes"] == "0" and rows[0]["speedup_vs_naive"] == "1"
    data = json.loads((smoke_run / "results.json").read_text())
    assert {"environment", "rows", "spread"} <= set(data)
    key = "smollm2-135m|smoke|full|"
    assert data["spread"][key]["tokens_per_s"]["n"] == 2
    report = (smoke_run / "report.md").read_text()
    assert "## smollm2-135m · smoke" in report and "| full |" in report and "torch_version" in report


def test_report_rerenders_and_rebuilds_a_half_written_results_json(smoke_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    (run / "report.md").unlink()
    assert kvbench("report", str(run)).returncode == 0 and (run / "report.md").exists()
    text = (run / "results.json").read_text()
    (run / "results.json").write_text(text[: len(text) // 2])  # torn file
    done = kvbench("report", str(run))
    assert done.returncode == 0, done.stderr
    assert len(json.loads((run / "results.json").read_text())["rows"]) == 3


@pytest.mark.parametrize("args, message", [
    (["--strategies", "nope"], "unknown strategy 'nope'; allowed: naive, full"),
    (["--workload", "nope"], "unknown workload 'nope'; allowed: smoke, chat-short"),
    (["--model", "/no/such/model"], "model '/no/such/model' not found"),
    (["--model", "random:nope"], "unknown random shape 'nope'; allowed:"),
    (["--param", "full.window=3"], "unknown parameter full.window; allowed: full takes none"),
    (["--model", "random:tiny-llama-ctx256", "--workload", "long-context"],
     "needs 1"),
    (["--out", "/proc/kvbench-cannot-write"], "cannot write to output directory"),
    (["--sampling", "temp=1"], "unknown sampling option 'temp'; allowed: temperature"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    # In-process (each subprocess pays ~8 s of imports); the real entry point is checked once below.
    code = main(["run", "--workload", "smoke", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kvbench: error: ") and message in lines[0], err


def test_the_real_entry_point_exits_2_with_one_line(tmp_path):
    done = kvbench("run", "--workload", "smoke", "--out", str(tmp_path / "x"), "--strategies", "nope")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvbench: error: ")
    assert "unknown strategy 'nope'; allowed: naive, full" in lines[0]


def test_context_error_names_the_limit(tmp_path):
    done = kvbench("run", "--model", "random:tiny-llama-ctx256", "--workload", "long-context", "--out",
                   str(tmp_path))
    assert "more than random:tiny-llama-ctx256's context of 256" in done.stderr


def test_timeout_becomes_a_failed_row_and_resume_finishes_without_doubling(tmp_path):
    out = tmp_path / "run"
    first = kvbench("run", "--model", "random:tiny-llama", "--workload", "smoke", "--strategies", "full",
                    "--repeats", "1", "--out", str(out), "--cell-timeout", "0.5")
    assert first.returncode == 1
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["status"] for r in rows} == {"failed"} and "timed out after 0.5 s" in rows[0]["error"]
    with open(out / "results.jsonl", "a") as f:
        f.write('{"row": {"model": "random:tiny-llama", "work')  # a kill mid-write
    second = kvbench("run", "--model", "random:tiny-llama", "--workload", "smoke", "--strategies", "full",
                     "--repeats", "1", "--out", str(out), "--resume")
    assert second.returncode == 0, second.stderr[-1500:]
    assert "cut off mid-write" in second.stderr
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["strategy"] for r in rows) == ["full", "naive"] and {r["status"] for r in rows} == {"ok"}
    third = kvbench("run", "--model", "random:tiny-llama", "--workload", "smoke", "--strategies", "full",
                    "--repeats", "1", "--out", str(out), "--resume")
    assert "2 of 2 cells already finished" in third.stderr
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2


def test_list_shows_strategies_parameters_and_workloads():
    done = kvbench("list")
    assert done.returncode == 0
    for word in ("naive", "full", "hf-generate", "step", "chat-short", "long-context", "smoke", "random:<"):
        assert word in done.stdout
