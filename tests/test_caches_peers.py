"""transformers' own caches as peer rows; a CLI sweep over a cache parameter makes one row per value."""

from __future__ import annotations

import csv

import pytest
import torch

from bench.cell import Unsupported
from strategies.peers import hf_own_caches as hf_caches
from tests.helpers import generate, score
from tests.test_cli import kvbench

PROMPTS = [list(range(5, 25)), list(range(30, 41))]


def test_hf_static_matches_our_full_cache(tiny):
    assert generate(tiny.model, "hf-static", PROMPTS, 8) == generate(tiny.model, "full", PROMPTS, 8)
    ours, theirs = score(tiny.model, "full", PROMPTS[0], PROMPTS[1]), score(tiny.model, "hf-static", *PROMPTS)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_hf_quantized_without_its_backend_is_unsupported(tiny, monkeypatch):
    monkeypatch.setattr(hf_caches, "is_optimum_quanto_available", lambda: False)
    monkeypatch.setattr(hf_caches, "is_hqq_available", lambda: False)
    with pytest.raises(Unsupported, match=r"nbits=4 needs the quanto backend: optimum-quanto .* not installed"):
        generate(tiny.model, "hf-quantized", PROMPTS, 4)
    with pytest.raises(Unsupported, match=r"nbits=8 needs the hqq backend"):
        score(tiny.model, "hf-quantized", PROMPTS[0], PROMPTS[1], {"hf-quantized": {"nbits": 8}})


def test_cli_sweeps_a_window_and_skips_a_missing_backend(tmp_path):
    done = kvbench("run", "--model", "random:tiny-llama", "--workload", "smoke", "--strategies",
                   "sliding-window,hf-quantized", "--param", "sliding-window.window=16,32", "--repeats", "1",
                   "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    windows = [r for r in rows if r["strategy"] == "sliding-window"]
    assert [r["params"] for r in windows] == ["sliding-window.window=16", "sliding-window.window=32"]
    assert all(r["status"] == "ok" and int(r["cache_bytes"]) > 0 for r in windows)
    (peer,) = [r for r in rows if r["strategy"] == "hf-quantized"]
    if hf_caches.is_optimum_quanto_available():
        assert peer["status"] == "ok"
    else:
        assert peer["status"] == "skipped" and "optimum-quanto" in peer["error"]
