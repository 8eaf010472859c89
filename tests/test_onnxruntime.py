"""The ONNX Runtime peer: the model exported with its KV cache, cached once per weights, run greedy through ONNX
Runtime's own cache (skipped where the optional extra is not installed, as in CI)."""

from __future__ import annotations

import sys

import pytest
import torch

from bench.models import load_model
from strategies.core.base import Unsupported, kv_shape
from strategies.core.sampling import GREEDY
from strategies.peers import onnx_export
from strategies.registry import compose

PROMPTS = [list(range(40, 64)), list(range(200, 211)) * 2]
MAX_NEW = 8


def generate(model, name: str, prompts: list[list[int]], n: int, comp=None):
    comp = comp or compose(name, {})
    comp.decoder.prepare(model)
    return comp.decoder.generate(model, comp.cache_factory(model), prompts, n, GREEDY, lambda i, t: None)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """The tiny model's graph exported once, into a cache of this module's own: (its peer, the export's figures)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'kvbench[onnx]'")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install 'kvbench[onnx]'")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVBENCH_CACHE", str(tmp_path_factory.mktemp("kvbench-cache")))
        comp = compose("onnxruntime", {})
        comp.decoder.prepare(tiny.model)
        yield comp, dict(comp.decoder._figures)


def test_greedy_tokens_equal_naive_and_the_cache_is_the_closed_form(tiny, exported):
    comp, _ = exported
    naive = generate(tiny.model, "naive", PROMPTS, MAX_NEW).tokens
    out = comp.decoder.generate(tiny.model, None, PROMPTS, MAX_NEW, GREEDY, lambda i, t: None)
    assert out.tokens == naive
    layers, kv_heads, head_dim = kv_shape(tiny.model.config)
    tokens = max(map(len, PROMPTS)) + MAX_NEW - 1  # the last emitted token is never fed back
    assert out.stats["cache_bytes"] == 2 * layers * kv_heads * head_dim * tokens * 4
    assert out.stats["cache_bytes_peak"] == out.stats["cache_bytes"] * (2 * tokens - 1) // tokens


def test_scores_through_its_own_cache_match_ours(tiny, exported):
    comp, _ = exported
    full = compose("full", {})
    prompt, continuation = PROMPTS[0], list(range(300, 310))
    ours = full.decoder.score(tiny.model, full.cache_factory(tiny.model), prompt, continuation)
    theirs = comp.decoder.score(tiny.model, None, prompt, continuation)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_the_export_is_written_once_and_found_again(tiny, exported, monkeypatch):
    _, first = exported
    assert first["onnx_cached"] is False and first["export_s"] > 0
    folder = onnx_export.export_dir(tiny.model)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no half-written directory left
    assert {"model.onnx", "meta.json"} <= {p.name for p in folder.iterdir()}

    def export_again(*args):
        raise AssertionError("exported a second time")

    monkeypatch.setattr(onnx_export, "export", export_again)
    again = compose("onnxruntime", {})
    again.decoder.prepare(tiny.model)
    figures = again.decoder._figures
    assert figures["onnx_cached"] is True and figures["export_s"] == first["export_s"]  # the export's own seconds


def test_a_missing_extra_skips_the_row_with_the_install_command(tiny, monkeypatch):
    """Unsupported from prepare is what the cell's process reports as a skipped row with this message."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    # the first of onnx / onnxruntime / onnxscript that is missing is named (CI has none of them)
    with pytest.raises(Unsupported, match=r"onnxruntime peer needs (onnx|onnxruntime|onnxscript), which is not "
                                          r"installed: pip install 'kvbench\[onnx\]'"):
        compose("onnxruntime", {}).decoder.prepare(tiny.model)


def test_settings_it_cannot_run_are_skipped_with_the_reason(tiny):
    with pytest.raises(ValueError, match="onnxruntime.graph_opt must be one of all, extended, basic, none, got 'x'"):
        compose("onnxruntime", {"onnxruntime": {"graph_opt": "x"}})
    pytest.importorskip("onnxruntime")
    half = load_model("random:tiny-llama", "bfloat16").model
    with pytest.raises(Unsupported, match="exported in float32 only.*got bfloat16"):
        compose("onnxruntime", {}).decoder.prepare(half)


@pytest.mark.long
def test_embedded_model_through_the_cli(tmp_path):
    """The embedded model on the smoke workload: a row with agreement vs naive and the export's seconds (the
    first run exports SmolLM2-135M: about two minutes on 2 cores)."""
    pytest.importorskip("onnxruntime")
    from bench.cli import main
    from bench.results.rows import load_results

    assert main(["run", "--workload", "smoke", "--strategies", "onnxruntime", "--repeats", "1", "--out",
                 str(tmp_path), "--no-history"]) == 0
    (row,) = [r for r in load_results(tmp_path)["rows"] if r["strategy"] == "onnxruntime"]
    assert row["status"] == "ok", row["error"]
    assert row["greedy_agreement"] >= 0.9 and row["export_s"] > 0 and row["tpot_ms"] > 0
    assert row["cache_bytes"] > 0 and row["generated_tokens"] == 16
