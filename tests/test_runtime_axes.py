"""The --attn and --compile axes: every value runs on random:tiny-llama (eager and sdpa rows token-exact against
naive, a compiled full row too), a combination that cannot run is a skipped cell with its reason, unknown values are
one line naming the allowed ones (exit 2), and the key carries both settings while older rows key as before."""

from __future__ import annotations

import pytest
import torch

from bench.cell import Cell, run_cell
from bench.cli import build_parser, main
from bench.commands.run import settings_of
from bench.config import ATTNS, COMPILE_MODES
from bench.grid import build_cells
from bench.key import row_key
from bench.results.report import swept_columns
from strategies.core.base import Unsupported
from strategies.kernels import attention_impl, compile_step

TINY = ["--model", "random:tiny-llama", "--workload", "smoke"]


def cells_of(argv: list[str]) -> list[Cell]:
    return build_cells(settings_of(build_parser().parse_args(["run", *TINY, *argv])), check_context=False)


def cell(tmp_path, strategy: str, **settings) -> dict:
    return run_cell(Cell(model="random:tiny-llama", workload="smoke", strategy=strategy, repeats=1, quality=False,
                         out_dir=str(tmp_path), **settings))["row"]


def test_the_options_allow_what_the_kernels_implement():
    assert ATTNS == attention_impl.ATTNS and attention_impl.DEFAULT_ATTN == ATTNS[0]
    assert COMPILE_MODES == compile_step.MODES


@pytest.mark.parametrize("args, message", [
    (["--attn", "eager,flash"], "unknown --attn 'flash'; allowed: sdpa, eager"),
    (["--compile", "fast"], "unknown --compile 'fast'; allowed: none, default, max-autotune, reduce-overhead"),
])
def test_unknown_values_are_one_line_naming_the_allowed_ones(args, message, tmp_path, capsys):
    code = main(["run", *TINY, "--strategies", "full", "--out", str(tmp_path / "x"), *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "x").exists()


def test_keys_carry_both_settings_and_older_rows_key_as_before():
    assert Cell("m", "w", "full").key == "m|w|full|"
    assert Cell("m", "w", "full", attn="eager", compile="default").key == "m|w|full||attn=eager|compile=default"
    old = {"model": "m", "workload": "w", "strategy": "full", "params": "", "sampling": "greedy", "seed": 0,
           "dtype": "float32", "device": "cpu", "weights": "packed", "threads": 2}
    assert row_key(old) == "m|w|full|"
    assert row_key({**old, "attn": "sdpa", "compile": "none"}) == "m|w|full|"


def test_comma_lists_make_rows_and_the_reference_is_uncompiled_per_attention():
    cells = cells_of(["--strategies", "naive,full", "--attn", "eager,sdpa", "--compile", "none,default"])
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys)) == 8  # 2 strategies × 2 attn × 2 compile
    refs = [c for c in cells if c.is_reference]
    assert sorted((c.attn, c.compile) for c in refs) == [("eager", "none"), ("sdpa", "none")]
    assert len({c.reference_path() for c in refs}) == 2  # one reference file per attention, never shared
    assert {c.attn: c.reference_path().name.endswith("__greedy.pt") for c in refs} == {"sdpa": True, "eager": False}
    # compiled only: the naive reference is added uncompiled
    only = cells_of(["--strategies", "full", "--compile", "default"])
    assert [(c.strategy, c.compile, c.is_reference) for c in only] == [("naive", "none", True),
                                                                        ("full", "default", False)]


def test_eager_attention_is_sdpa_math():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    mask = (torch.arange(6) <= 3).view(1, 1, 1, -1)
    for m in (None, mask):
        got = attention_impl.eager(q, k, v, 0.35, m)
        assert torch.allclose(got, attention_impl.sdpa(q, k, v, 0.35, m), atol=1e-6)
    assert torch.allclose(attention_impl.eager(q, k, v, 0.35, mask), attention_impl.eager(q, k[:, :, :4], v[:, :, :4],
                                                                                           0.35), atol=1e-6)


def test_eager_and_sdpa_rows_are_exact_against_their_naive(tmp_path):
    for attn in ("eager", "sdpa"):
        naive = cell(tmp_path, "naive", attn=attn)
        full = cell(tmp_path, "full", attn=attn)
        assert naive["attn"] == full["attn"] == attn
        assert full["status"] == "ok" and full["greedy_agreement"] == 1.0 and full["decode_forward"] == "lean"
    h2o = cell(tmp_path, "h2o", attn="eager")  # its hooks recompute queries: any attention implementation
    assert h2o["attn"] == "eager" and h2o["status"] == "ok"


@pytest.mark.parametrize("strategy, settings, reason", [
    ("continuous", {"attn": "eager"}, "attn=eager cannot apply: continuous runs its own SDPA"),
    ("naive", {"compile": "default"}, "compile needs static shapes; naive recomputes"),
    ("h2o", {"compile": "default"}, "compile needs static shapes; h2o evicts"),
    ("speculative", {"compile": "default"}, "compile needs static shapes; speculative is not a one-token step"),
    ("hf-generate", {"compile": "default"}, "compile needs static shapes; hf-generate"),
    ("full", {"compile": "reduce-overhead"}, "reduce-overhead records CUDA graphs; device cpu has none"),
])
def test_combinations_that_cannot_run_are_skipped_with_the_reason(tmp_path, strategy, settings, reason):
    with pytest.raises(Unsupported, match=reason):
        cell(tmp_path, strategy, **settings)


def test_no_cxx_compiler_skips_compile(monkeypatch, tiny):
    monkeypatch.setattr(compile_step.shutil, "which", lambda name: None)
    assert "needs a C++ compiler" in compile_step.compile_unsupported("default", "step", {}, "full", tiny.model,
                                                                      "cpu", True)
    assert compile_step.compile_unsupported("none", "paged", {}, None, tiny.model, "cpu", True) is None


def test_the_report_shows_swept_axes_and_compile_time_apart():
    rows = [{"strategy": "full", "attn": "sdpa", "compile": "none"},
            {"strategy": "full", "attn": "eager", "compile": "default", "compile_s": 24.5}]
    headers = [h for _, h, _ in swept_columns([("strategy", "strategy", "{}"), ("params", "params", "{}")], rows)]
    assert headers == ["strategy", "params", "attn", "compile", "compile s"]


@pytest.mark.long  # inductor compiles the tiny model's step in ~25 s on a 2-core CPU
def test_a_compiled_full_row_is_exact_and_reports_compile_time_apart(tmp_path):
    naive = cell(tmp_path, "naive")
    row = cell(tmp_path, "full", compile="default")
    assert naive["status"] == row["status"] == "ok"
    assert row["greedy_agreement"] == 1.0 and row["decode_forward"] == "lean"
    assert row["compile"] == "default" and row["compile_s"] > 0 and row["weights"] == "stock"


def test_half_precision_rows_report_agreement_and_fp32_rows_must_be_exact(tmp_path):
    from bench.cell import exact_required
    from strategies.registry import compose

    full, window = compose("full", {}), compose("sliding-window", {})
    assert exact_required(Cell(model="m", workload="w", strategy="full"), full)
    for dtype in ("bfloat16", "float16"):  # recompute and cache paths round differently: a near-tie may flip
        assert not exact_required(Cell(model="m", workload="w", strategy="full", dtype=dtype), full)
    assert not exact_required(Cell(model="m", workload="w", strategy="full", weight_quant="int8"), full)
    assert not exact_required(Cell(model="m", workload="w", strategy="sliding-window"), window)
    naive, bf16 = cell(tmp_path, "naive", dtype="bfloat16"), cell(tmp_path, "full", dtype="bfloat16")
    assert bf16["status"] == "ok" and bf16["lossless"] is False and 0.0 <= bf16["greedy_agreement"] <= 1.0
    assert naive["dtype"] == bf16["dtype"] == "bfloat16"
