"""quant-int8/int4/mixed: exact bytes vs the closed form, quality through the cache path, rollback, sweeps."""

from __future__ import annotations

import csv

import pytest
import torch

from bench.models import load_model
from bench.workloads.catalog import get_workload
from strategies.core.forward import forward_logits
from strategies.registry import StrategyError, compose, expand, parse_params
from tests.helpers import generate, score
from tests.test_cli import kvbench

FP32 = 4


def run_tokens(model, cache, ids: list[int], start: int = 0) -> torch.Tensor:
    """Feed ``ids`` one forward (a prefill when start == 0); the last position's logits."""
    with torch.inference_mode():
        return forward_logits(model, torch.tensor([ids]), cache, start)[-1]


@pytest.mark.parametrize("name,key_bytes,value_bytes", [
    # per token per head, head_dim 16, group 8, asymmetric: codes + 2 groups x (fp16 scale + fp16 zero)
    ("quant-int8", 16 + 2 * 4, 16 + 2 * 4), ("quant-int4", 8 + 2 * 4, 8 + 2 * 4), ("quant-mixed", 16 + 8, 8 + 8)])
def test_bytes_equal_the_closed_form(tiny, name, key_bytes, value_bytes):
    model, cfg = tiny.model, tiny.model.config
    layers, heads, head_dim, residual, max_len = cfg.num_hidden_layers, cfg.num_key_value_heads, 16, 8, 64
    cache = compose(name, {name: {"group_size": 8, "residual": residual}}).cache.new_cache(model, 1, max_len)
    prompt = list(range(100, 137))  # 37 tokens: 32 quantized, 5 recent
    run_tokens(model, cache, prompt)
    for t in range(len(prompt), 50):  # 13 steps: T = 50 -> 48 quantized, 2 recent
        run_tokens(model, cache, [7], t)
    quantized, recent = 48, 2
    assert [layer.num_quantized for layer in cache.layers] == [quantized] * layers
    work = 2 * heads * max_len * head_dim * FP32  # the shared K and V dequantization buffers, held between steps
    expected = layers * heads * (quantized * (key_bytes + value_bytes) + recent * 2 * head_dim * FP32) + work
    assert cache.nbytes() == expected
    # the quantized part alone: 1/4 (int8) or 1/8 (int4) of fp32 plus the scales and zeros
    per_token_fp32 = 2 * head_dim * FP32
    ratio = {"quant-int8": 1 / 4, "quant-int4": 1 / 8, "quant-mixed": 3 / 16}[name]
    assert (key_bytes + value_bytes) == ratio * per_token_fp32 + 2 * (head_dim // 8) * 2 * 2


def test_group_size_must_divide_head_dim(tiny):
    strategy = compose("quant-int4", {"quant-int4": {"group_size": 12}}).cache
    assert strategy.supports(tiny.model) == "group_size 12 must divide head_dim 16"
    with pytest.raises(ValueError, match="group_size 12 must divide head_dim 16"):
        strategy.new_cache(tiny.model, 1, 8)
    with pytest.raises(StrategyError, match="residual must be >= 1"):
        expand("quant-int8", parse_params(["quant-int8.residual=0"]))


def test_int8_and_int4_give_different_perplexities_through_the_cache(smol):
    context, continuation = get_workload("smoke").quality_text(smol.tokenizer)
    context, continuation = context[:64], continuation[:16]
    params = {n: {"residual": 4, "group_size": 32} for n in ("quant-int8", "quant-int4")}

    def nll(spec: str) -> float:
        logprobs = score(smol.model, spec, context, continuation, params)
        return -float(logprobs.gather(1, torch.tensor(continuation)[:, None]).mean())

    full, int8, int4 = nll("full"), nll("quant-int8"), nll("quant-int4")
    assert int8 != int4 and abs(int8 - full) < abs(int4 - full)
    assert abs(int8 - full) / full < 0.01  # int8 is near-lossless; int4 costs more, but not everything
    assert abs(int4 - full) / full < 0.15


def test_residual_longer_than_the_sequence_equals_full(tiny):
    prompts = [[5, 17, 923, 44, 8], [300, 2000, 7]]
    full = generate(tiny.model, "full", prompts, 12)
    assert generate(tiny.model, "quant-int4", prompts, 12, {"quant-int4": {"residual": 64}}) == full


@pytest.mark.parametrize("name", ["quant-int8", "quant-int4", "quant-mixed"])
def test_rollback_gives_the_same_logits_as_never_adding(tiny, name):
    model, params = tiny.model, {name: {"group_size": 8, "residual": 8}}
    prompt, extra = list(range(200, 220)), [11, 12, 13, 14, 15]  # 20 tokens: 16 quantized, 4 recent

    def cache():
        return compose(name, params).cache.new_cache(model, 1, 64)

    def feed(c, ids, start):
        return [run_tokens(model, c, [t], start + i) for i, t in enumerate(ids)]

    # inside the residual window: exact
    rolled, clean = cache(), cache()
    run_tokens(model, rolled, prompt), run_tokens(model, clean, prompt)
    feed(rolled, extra[:3], 20)
    rolled.crop(-3)
    assert rolled.get_seq_length() == 20
    assert torch.equal(torch.stack(feed(rolled, extra, 20)), torch.stack(feed(clean, extra, 20)))
    # reaching into the quantized part (T 25 -> 15 < 16 quantized): tokens are dropped from it, the recent
    # ones stay quantized until the next block boundary, after which the layout is what it would have been
    rolled, clean = cache(), cache()
    run_tokens(model, rolled, prompt), run_tokens(model, clean, prompt[:15])
    feed(rolled, extra, 20)
    rolled.crop(-10)
    assert rolled.get_seq_length() == 15 and rolled.layers[0].num_quantized == 15
    later = list(range(40, 52))  # T 15 -> 27 passes the boundary at 24
    feed(rolled, later, 15), feed(clean, later, 15)
    assert [layer.num_quantized for layer in rolled.layers] == [layer.num_quantized for layer in clean.layers]
    # layer 0's K/V depend on the token and its position alone: bit for bit what never-adding holds
    held = [(q.data, q.scale, q.zero) for q in rolled.layers[0].quantized + clean.layers[0].quantized]
    assert all(torch.equal(a, b) for x, y in zip(held[:2], held[2:]) for a, b in zip(x, y))
    assert torch.equal(rolled.layers[0].keys, clean.layers[0].keys)


def test_every_family_runs(tiny):
    prompts = [list(range(30, 70))]
    for shape in ("tiny-gpt2", "tiny-qwen3"):
        model = load_model(f"random:{shape}").model
        for name in ("quant-int8", "quant-int4", "quant-mixed"):
            tokens = generate(model, name, prompts, 10, {name: {"group_size": 16, "residual": 4}})
            assert len(tokens[0]) == 10


def test_group_size_sweep_through_the_cli_makes_one_row_per_value(tmp_path):
    done = kvbench("run", "--model", "random:tiny-llama", "--workload", "smoke", "--strategies", "quant-int4",
                   "--param", "quant-int4.group_size=8,16", "--repeats", "1", "--no-quality", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [r for r in csv.DictReader(open(tmp_path / "results.csv")) if r["strategy"] == "quant-int4"]
    assert [r["params"] for r in rows] == ["quant-int4.group_size=8", "quant-int4.group_size=16"]
    assert all(r["status"] == "ok" for r in rows)
    # a smaller group holds more scales: more bytes for the same tokens
    assert int(rows[0]["cache_bytes"]) > int(rows[1]["cache_bytes"])
