"""The llama.cpp peer on the embedded GGUF (skipped where the optional extra is not installed, as in CI)."""

from __future__ import annotations

import pytest
import torch

from strategies.core.base import Unsupported
from strategies.core.sampling import Sampling
from strategies.registry import compose

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: make llamacpp")


def generate(loaded, quant: str, prompt: list[int], n: int) -> list[int]:
    comp = compose("llamacpp", {"llamacpp": {"quant": quant, "n_ctx": 256}})
    comp.decoder.prepare(loaded.model)
    return comp.decoder.generate(loaded.model, None, [prompt], n, Sampling(), lambda i, t: None).tokens[0]


def test_f32_is_our_weights_and_agrees_with_our_greedy_tokens(smol, smol_prompts):
    prompt = smol_prompts[0]
    with torch.inference_mode():
        ours = smol.model.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12,
                                   do_sample=False)[0, len(prompt):].tolist()
    theirs = generate(smol, "f32", prompt, 12)
    assert len(theirs) == 12  # EOS suppressed: exactly max_new_tokens
    assert sum(a == b for a, b in zip(ours, theirs)) >= 10


def test_shipped_q4_1_scores_through_its_own_cache(smol, smol_prompts):
    comp = compose("llamacpp", {"llamacpp": {"quant": "q4_1", "n_ctx": 256}})
    comp.decoder.prepare(smol.model)
    assert comp.decoder.gguf_bytes > 50e6
    prompt, continuation = smol_prompts[1], [504, 3426, 314]
    logprobs = comp.decoder.score(smol.model, None, prompt, continuation)
    assert logprobs.shape == (3, smol.model.config.vocab_size)
    assert torch.allclose(logprobs.exp().sum(-1), torch.ones(3), atol=1e-3)


def test_a_model_without_gguf_is_unsupported_and_bad_quant_is_named(tiny):
    comp = compose("llamacpp", {})
    with pytest.raises(Unsupported, match="GGUF"):
        comp.decoder.prepare(tiny.model)
    with pytest.raises(ValueError, match="llamacpp.quant must be one of f32, bf16, q8_0, q4_1, got 'q3'"):
        compose("llamacpp", {"llamacpp": {"quant": "q3"}})


def test_weight_bytes_are_what_llama_cpp_reads_per_step(smol):
    """f32 reads exactly our fp32 model's bytes (same weights, tied output); the quantized files fewer, as stored."""
    import gguf

    from strategies.kernels.weight_quant import decode_weight_bytes as ours
    from strategies.peers.gguf_files import decode_weight_bytes

    sizes, paths = {}, {}
    for quant in ("f32", "q8_0", "q4_1"):
        comp = compose("llamacpp", {"llamacpp": {"quant": quant, "n_ctx": 256}})
        comp.decoder.prepare(smol.model)
        paths[quant], sizes[quant] = comp.decoder._path, decode_weight_bytes(comp.decoder._path)
        gen = comp.decoder.generate(smol.model, None, [[1, 2, 3]], 2, Sampling(), lambda i, t: None)
        assert gen.stats["weight_bytes"] == sizes[quant]
    assert sizes["f32"] == ours(smol.model)
    for quant in ("q8_0", "q4_1"):  # closed form: each tensor's blocks x block bytes of its type (ggml's table)
        expected = 0
        for t in gguf.GGUFReader(paths[quant]).tensors:
            block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
            nbytes = int(t.n_elements) // block * size
            expected += nbytes + nbytes // int(t.shape[1]) if t.name == "token_embd.weight" else nbytes
        assert sizes[quant] == expected < sizes["f32"] / 3


def test_dtype_and_weight_quant_axes_are_skipped_with_the_llamacpp_setting_to_use():
    from bench.models import load_model
    from strategies.kernels.weight_quant import quantize_weights

    comp = compose("llamacpp", {})
    bf16 = load_model("smollm2-135m", "bfloat16").model
    with pytest.raises(Unsupported, match="not --dtype bfloat16 .bf16 is llamacpp.quant=bf16"):
        comp.decoder.prepare(bf16)
    quantize_weights(bf16.float(), "int8")
    with pytest.raises(Unsupported, match="not --weight-quant int8 .int8/int4 weights are llamacpp.quant=q8_0/q4_1"):
        comp.decoder.prepare(bf16)
