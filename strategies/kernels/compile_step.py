"""`--compile`: ``torch.compile`` of the decode step over a preallocated cache of fixed capacity, as gpt-fast does.

Static shapes are what make one compiled graph serve every step: each request's cache is allocated to the same
capacity (the cell's longest prompt + new tokens, ``FixedCapacity``), the step writes its K/V at ``position`` (a
tensor, so a new position is not a new graph) and attends over the whole buffer with a mask of the filled slots.
The slots past the prompt are zeroed once per request: a masked slot's weight is exactly 0, but 0 x NaN (what
uninitialised memory may hold) is not. Prefill stays on transformers' forward, as in every lean path.

Compilation happens in the cell's untimed warm-up (``CompiledDecoder.compile_s``: the wall time of the steps
that traced and compiled); after it the decoder is sealed, and a step that would compile again (a cache of another
shape) raises rather than put a compile inside a timed repeat. Only ``step`` over ``full`` or ``static`` on a
llama-family model has such a step; every other strategy changes shapes between steps and is skipped
(``compile_unsupported``). ``reduce-overhead`` (CUDA graphs) needs CUDA.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import torch
from transformers import Cache, PreTrainedModel

from strategies.kernels.attention_impl import KERNELS, lean_layer
from strategies.kernels.lean_forward import LeanDecoder, supports_lean

MODES = ("none", "default", "max-autotune", "reduce-overhead")
COMPILABLE_CACHES = ("full", "static")
# why a strategy's shapes change between decode steps (the skip reason after "compile needs static shapes; ")
DYNAMIC = {
    "naive": "naive recomputes the whole, growing sequence at every step",
    "paged": "paged grows a block table and gathers a growing set of blocks",
    "prefix-cache": "prefix-cache shares and grows paged blocks",
    "quant-int8": "quant-int8 appends to a growing quantized cache", "quant-int4": "quant-int4 appends to a growing "
    "quantized cache", "quant-mixed": "quant-mixed appends to a growing quantized cache",
    "sliding-window": "sliding-window drops entries as it slides", "sinks": "sinks drops entries as it slides",
    "chunk-summary": "chunk-summary replaces chunks by summaries", "snapkv": "snapkv evicts entries",
    "h2o": "h2o evicts entries at every step", "tova": "tova evicts entries at every step",
    "keynorm": "keynorm evicts entries",
}


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would call on CPU, if one is on PATH."""
    from torch._inductor import config

    names = config.cpp.cxx if isinstance(config.cpp.cxx, tuple) else (config.cpp.cxx,)
    for name in [n for n in names if n] + ["g++", "c++", "clang++"]:
        if path := shutil.which(name):
            return path
    return None


def compile_unsupported(mode: str, decoder: str, decoder_params: dict[str, Any], cache: str | None,
                        model: PreTrainedModel, device: str, prompt_workload: bool) -> str | None:
    """Why ``mode`` cannot compile this cell (it is skipped with the reason), or None."""
    if mode not in MODES:
        return f"unknown compile mode {mode!r}; allowed: {', '.join(MODES)}"
    if mode == "none":
        return None
    if decoder != "step" or cache not in COMPILABLE_CACHES:
        name = cache if decoder == "step" else decoder
        why = DYNAMIC.get(name or "", f"{name} is not a one-token step over a preallocated cache "
                                       f"({', '.join(COMPILABLE_CACHES)})")
        return f"compile needs static shapes; {why}"
    if decoder_params.get("forward", "auto") != "auto":
        return "compile needs static shapes; step.forward=hf runs transformers' forward, which is not compiled here"
    if not supports_lean(model):
        return (f"compile needs the lean decode step, which covers llama-family models (llama, mistral, qwen2, "
                f"qwen3), not {model.config.model_type}")
    if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
        return "compile needs static shapes; a sliding-window model leaves the lean step past its window"
    if not prompt_workload:
        return "compile is measured on prompt workloads (a request workload's capacity is not known per cell)"
    if mode == "reduce-overhead" and not device.startswith("cuda"):
        return f"compile mode reduce-overhead records CUDA graphs; device {device} has none"
    if device == "cpu" and cxx_compiler() is None:
        return "compile needs a C++ compiler for inductor on CPU (none of g++, c++, clang++ on PATH)"
    if device.startswith("cuda"):
        from torch.utils._triton import has_triton

        if not has_triton():
            return "compile needs triton for inductor on CUDA (pip install triton)"
    return None


class FixedCapacity:
    """A cache strategy whose every cache holds ``capacity`` tokens (or the request's, if longer): one shape for
    every request of the cell. Everything else is the wrapped strategy's (name, lossless, supports...)."""

    def __init__(self, inner: Any, capacity: int):
        self.inner, self.capacity = inner, capacity

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> Cache | None:
        return self.inner.new_cache(model, batch, max(self.capacity, max_len))


class CompiledDecoder(LeanDecoder):
    """The lean decode step compiled with ``torch.compile(mode)`` over caches of one fixed capacity."""

    def __init__(self, model: PreTrainedModel, mode: str, attn: str):
        super().__init__(model)
        self.mode, self.attn = mode, attn
        self.compile_s, self.calls, self.sealed = 0.0, 0, False
        self.shapes: set[tuple] = set()
        self._zeroed: Cache | None = None
        # Regional compilation: one decoder layer is compiled and reused by every layer (the layers differ in
        # their parameters only, which dynamo takes as inputs), so compile time does not grow with depth;
        # embedding, RoPE tables, final norm and LM head run eagerly around it.
        self.layer_fn = torch.compile(self._layer, mode=None if mode == "default" else mode, fullgraph=True,
                                      dynamic=False)

    def _layer(self, layer: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               pos: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        def write(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            keys.index_copy_(2, pos, k)
            values.index_copy_(2, pos, v)
            return keys, values

        return lean_layer(layer, x, cos, sin, write, KERNELS[self.attn], mask)

    def fn(self, token: torch.Tensor, pos: torch.Tensor, keys: list[torch.Tensor],
           values: list[torch.Tensor]) -> torch.Tensor:
        m = self.model.model
        x = m.embed_tokens(token.view(1, 1))
        cos, sin = m.rotary_emb(x, pos.view(1, 1))
        mask = (torch.arange(keys[0].shape[2], device=pos.device) <= pos).view(1, 1, 1, -1)
        for i, layer in enumerate(m.layers):
            x = self.layer_fn(layer, x, cos, sin, pos, mask, keys[i], values[i])
        return self.model.lm_head(m.norm(x))[0, -1].float()

    @torch.inference_mode()
    def step(self, token: torch.Tensor, position: int, cache: Cache) -> torch.Tensor:
        layers = cache.layers
        keys, values = [la.keys for la in layers], [la.values for la in layers]
        shape = (tuple(keys[0].shape), tuple(values[0].shape), keys[0].dtype)
        if shape not in self.shapes:
            if self.sealed:
                raise RuntimeError(f"compiled decode step met a cache of shape {shape[0]} after warm-up (compiled "
                                   f"for {sorted(self.shapes)}): it would compile inside a timed repeat")
            self.shapes.add(shape)
        if cache is not self._zeroed:  # a new request: clear the slots past its prompt once (see the docstring)
            for la in layers:
                la.keys[:, :, la.length:].zero_()
                la.values[:, :, la.length:].zero_()
            self._zeroed = cache
        pos = torch.tensor([position], device=token.device)
        start = time.perf_counter()
        logits = self.fn(token.reshape(1), pos, keys, values)
        if not self.sealed:
            self.compile_s += time.perf_counter() - start
        for la in layers:
            la.length = position + 1
        self.calls += 1
        return logits

    def seal(self) -> None:
        """After warm-up: a cache of a shape not compiled yet is an error, never a compile inside a timed repeat."""
        self.sealed = True


def install(model: PreTrainedModel, mode: str, attn: str) -> CompiledDecoder:
    """Make the lean path of ``model`` the compiled step (lean_forward.lean_decoder() hands out the decoder kept on
    the model); returns it, for warm-up and ``compile_s``."""
    compiled = model._kvbench_lean = CompiledDecoder(model, mode, attn)
    return compiled
