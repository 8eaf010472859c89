"""Micro-benchmarks of the hot kernels (pytest-benchmark). `make test-bench` runs them; `make test` does not.

Adding a kernel is one function: decorate a *setup* function with ``@kernel`` that builds its inputs once and
returns the zero-argument callable to time. Compare with the last saved run: see README, "Micro-benchmarks".
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from bench.models import load_model
from strategies.caches.full import FullCache
from strategies.core.base import storage_bytes
from strategies.core.forward import decode_one_token, prefill
from strategies.core.sampling import Sampling

KERNELS: dict[str, Callable[[], Callable[[], object]]] = {}
PROMPT_TOKENS = 64


def kernel(setup: Callable[[], Callable[[], object]]) -> Callable[[], Callable[[], object]]:
    KERNELS[setup.__name__] = setup
    return setup


def tiny_model():
    torch.set_num_threads(1)  # one thread: less sensitive to the other processes of a shared machine
    return load_model("random:tiny-llama").model


@kernel
def decode_one_token_full_cache():
    """One step decode on random:tiny-llama over a full cache holding a 64-token prompt (rolled back each call)."""
    model = tiny_model()
    seq = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS + 1))
    cache = FullCache().new_cache(model, 1, PROMPT_TOKENS + 1)
    with torch.inference_mode():
        prefill(model, cache, seq[:, :PROMPT_TOKENS])

    @torch.inference_mode()
    def step():
        decode_one_token(model, cache, seq, PROMPT_TOKENS + 1)
        cache.crop(-1)

    return step


@kernel
def decode_one_token_no_cache():
    """The naive step: recompute the whole 65-token sequence for one token."""
    model = tiny_model()
    seq = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS + 1))
    return torch.inference_mode()(lambda: decode_one_token(model, None, seq, PROMPT_TOKENS + 1))


@kernel
def sampling_probs_top_k_top_p_min_p():
    """The sampling filters over a SmolLM2-sized vocabulary (49152), with repetition penalty over 256 tokens."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 49152, generator=gen)
    history = torch.randint(0, 49152, (1, 256), generator=gen)
    sampling = Sampling(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.1)
    return lambda: sampling.probs(logits, history)


@kernel
def storage_bytes_of_a_30_layer_cache():
    """Byte accounting of a SmolLM2-shaped cache (30 layers × K and V), as probe_cache calls it per token."""
    tensors = [torch.empty(1, 3, 128, 64) for _ in range(60)]
    return lambda: storage_bytes(*tensors)


# TODO after merge (kernels on other branches): kv_quant.quantize / dequantize int8 and int4 (quant branch),
# block_pool.BlockPool.allocate/free and the paged gather (caches/serving branches), n-gram lookup (decoding).


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel(benchmark, name):
    run = KERNELS[name]()
    benchmark.group = "kernels"
    benchmark(run)
