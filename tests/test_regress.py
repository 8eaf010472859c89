"""Real runs on random:tiny-llama: the same code twice passes `compare` (with CI's options); planted regressions —
a step made slower by a sleep, a cache that holds more bytes — fail it.

The plant lives in a ``sitecustomize`` put first on PYTHONPATH, so every spawned cell process gets it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUITE = ["--model", "random:tiny-llama", "--workload", "smoke", "--strategies", "naive,full", "--repeats", "3",
         "--naive-repeats", "3", "--threads", "1", "--no-history"]
CI_COMPARE = (REPO / "reports" / "baseline" / "compare.args").read_text().split()
PLANT = '''
import os, time
import strategies.caches.full as full, strategies.decoding.step as step
if os.environ.get("PLANT_SLEEP"):
    decode = step.decode_one_token
    def slow(model, cache, *args, **kwargs):
        if cache is not None:  # only cached decoding (full), not naive: the speedup must drop
            time.sleep(float(os.environ["PLANT_SLEEP"]))
        return decode(model, cache, *args, **kwargs)
    step.decode_one_token = slow
if os.environ.get("PLANT_EXTRA_TOKENS"):
    new_cache = full.FullCache.new_cache
    full.FullCache.new_cache = lambda self, model, batch, max_len: new_cache(
        self, model, batch, max_len + int(os.environ["PLANT_EXTRA_TOKENS"]))
'''


def kvbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env={**os.environ, **(env or {})})


def tiny_run(out: Path, plant_dir: Path | None = None, **plant: str) -> Path:
    env = {}
    if plant:
        env = {"PYTHONPATH": os.pathsep.join([str(plant_dir), str(REPO), os.environ.get("PYTHONPATH", "")]),
               **plant}
    done = kvbench("run", *SUITE, "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("baseline"))


@pytest.fixture(scope="module")
def plant_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plant")
    (d / "sitecustomize.py").write_text(PLANT)
    return d


def verdicts(compare_md: Path, cell: str) -> dict[str, str]:
    """metric -> verdict of one cell's table in the Markdown written by `compare --markdown`."""
    out, inside = {}, False
    for line in compare_md.read_text().splitlines():
        if line.startswith("## "):
            inside = line[3:] == cell
        elif inside and line.startswith("| ") and not line.startswith("| metric"):
            parts = [p.strip() for p in line.strip("|").split(" | ")]
            out[parts[0].split(" [")[0]] = parts[-1]
    return out


def test_a_a_same_code_twice_passes_with_ci_options(baseline, tmp_path):
    again = tiny_run(tmp_path / "again")
    # A tiny model's naive pass lasts ~25 ms, so its speedup swings up to 2x between identical runs: the ratio gate
    # gets a wider tolerance here (the real-model CI suite keeps compare.args'); every exact gate stays as in CI.
    done = kvbench("compare", str(baseline), str(again), *CI_COMPARE, "--ratio-tol", "0.8",
                   "--markdown", str(tmp_path / "c.md"))
    assert done.returncode == 0, done.stdout[-3000:]
    full = verdicts(tmp_path / "c.md", "random:tiny-llama|smoke|full||threads=1")
    for name in ("status", "cache_bytes", "cache_bytes_peak", "greedy_agreement", "generated_tokens", "ppl"):
        assert full[name] == "same", (name, full)
    assert "Same environment" in (tmp_path / "c.md").read_text()
    # what a run writes is standard JSON (jq, JSON.parse), and names the kvbench and Python that wrote it
    data = json.loads((again / "results.json").read_text(), parse_constant=refuse)
    assert data["schema_version"] == 2 and data["kvbench_version"] and data["environment"]["cpu_capability"]
    assert all(r["python_version"] and r["cpu_capability"] for r in data["rows"])
    for line in (again / "results.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


def refuse(token: str):
    raise AssertionError(f"non-standard JSON token {token} in a results file")


def test_the_committed_baseline_still_judges_a_run_in_todays_format(tmp_path):
    """reports/baseline predates schema 2 (no cpu_capability, no schema_version): today's files compare with it
    as the same environment, every figure judged."""
    from bench.env import cpu_capability
    from bench.results.rows import load_results, row_key, write_run

    old = load_results(REPO / "reports" / "baseline")
    assert old["schema_version"] == 1 and "cpu_capability" not in old["environment"]
    records = [{"row": {**r, "cpu_capability": cpu_capability()}, "spread": old["spread"].get(row_key(r), {}),
                "samples": old["samples"].get(row_key(r), {})} for r in old["rows"]]
    write_run(tmp_path, records, {**old["environment"], "cpu_capability": cpu_capability()}, old["meta"])
    done = kvbench("compare", str(REPO / "reports" / "baseline"), str(tmp_path), *CI_COMPARE,
                   "--markdown", str(tmp_path / "c.md"))
    assert done.returncode == 0, done.stdout[-3000:]
    text = (tmp_path / "c.md").read_text()
    assert "Same environment" in text and "cpu_capability (no baseline value)" in text and "not comparable" not in text


def test_planted_sleep_and_bigger_cache_are_caught(baseline, plant_dir, tmp_path):
    """One planted run (two independent plants, to keep the test short): a 30 ms sleep in each cached step and a
    full cache preallocated 16 tokens too long."""
    planted = tiny_run(tmp_path / "planted", plant_dir, PLANT_SLEEP="0.03", PLANT_EXTRA_TOKENS="16")
    rows = {r["strategy"]: r for r in json.loads((planted / "results.json").read_text())["rows"]}
    base = {r["strategy"]: r for r in json.loads((baseline / "results.json").read_text())["rows"]}
    assert rows["full"]["cache_bytes"] > base["full"]["cache_bytes"]  # the plant took effect in the cell process
    done = kvbench("compare", str(baseline), str(planted), *CI_COMPARE, "--markdown", str(tmp_path / "c.md"))
    assert done.returncode == 1, done.stdout[-3000:]
    full = verdicts(tmp_path / "c.md", "random:tiny-llama|smoke|full||threads=1")
    assert full["cache_bytes"] == full["cache_bytes_peak"] == "changed", full
    assert full["speedup_vs_naive"].startswith("regression"), full
    assert full["status"] == full["greedy_agreement"] == full["generated_tokens"] == "same", full  # same tokens
    # timings alone never gate; and 3 + 3 repeats cannot reach p < 0.002: insufficient data
    assert full["tokens_per_s"].startswith("insufficient data"), full
    naive = verdicts(tmp_path / "c.md", "random:tiny-llama|smoke|naive||threads=1")
    assert naive["cache_bytes"] == naive["speedup_vs_naive"] == "same", naive
