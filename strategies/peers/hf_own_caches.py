"""Peer rows: transformers' own StaticCache and QuantizedCache, driven by its ``generate()`` in the same harness.

`hf-static` is ``cache_implementation="static"``; `hf-quantized` is ``cache_implementation="quantized"`` (KIVI-style:
the last ``residual_length`` tokens in full precision, older ones group-wise quantized) with the quanto backend for
2 and 4 bits and HQQ for 8 bits — optional extras; without the backend the cell is skipped with the reason.
Scoring goes through the same cache class, one token per forward after the prompt. transformers 5.x has no
standalone sliding-window or sink cache any more (sliding layers exist only for models that declare them), so those
have no peer row. Their bytes are not probed: the harness does not see inside transformers' caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import Cache, PreTrainedModel, QuantizedCache, StaticCache
from transformers.utils import is_hqq_available, is_optimum_quanto_available

from strategies.core.base import Emit, Generation, NewCache, Unsupported
from strategies.core.sampling import Sampling
from strategies.peers.hf_generate import HFGenerate


@dataclass
class HFCachePeer(HFGenerate):
    """transformers ``generate`` with ``cache_implementation`` (and ``cache_config``) of a subclass."""

    name = ""  # a base, not a registry entry
    summary = ""
    cache_implementation: ClassVar[str] = ""

    def cache_config(self) -> dict[str, Any] | None:
        return None

    def make_cache(self, model: PreTrainedModel, max_len: int) -> Cache:
        raise NotImplementedError

    def check_backend(self) -> None:
        """Raise Unsupported when an optional backend is missing."""

    def extra_kwargs(self, model: PreTrainedModel) -> dict:
        return dict(cache_implementation=self.cache_implementation, cache_config=self.cache_config())

    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        self.check_backend()
        return super().generate(model, new_cache, prompts, max_new_tokens, sampling, emit)

    def score(self, model: PreTrainedModel, new_cache: NewCache, prompt_ids: list[int],
              continuation_ids: list[int]) -> torch.Tensor:
        self.check_backend()
        return super().score(model, new_cache, prompt_ids, continuation_ids)


@dataclass
class HFStatic(HFCachePeer):
    name = "hf-static"
    lossless = True
    summary = "peer: transformers generate() with its StaticCache"
    cache_implementation = "static"

    def make_cache(self, model: PreTrainedModel, max_len: int) -> Cache:
        return StaticCache(config=model.config, max_cache_len=max_len)


BACKENDS = {2: "quanto", 4: "quanto", 8: "hqq"}


@dataclass
class HFQuantized(HFCachePeer):
    name = "hf-quantized"
    lossless = False  # a quantized cache changes the logits: its tokens may diverge from naive's, as quant-int4's do
    summary = "peer: transformers QuantizedCache (quanto 2/4-bit, HQQ 8-bit; residual_length recent tokens exact)"
    cache_implementation = "quantized"
    nbits: int = field(
        default=4, metadata={"help": "bits per quantized value: 2 or 4 (quanto backend) or 8 (HQQ backend)"})
    q_group_size: int = field(default=64, metadata={"help": "values sharing one scale and zero-point, >= 1"})
    residual_length: int = field(default=128, metadata={"help": "most recent tokens kept in full precision, >= 0"})

    def validate(self) -> None:
        if self.nbits not in BACKENDS:
            raise ValueError(f"nbits must be one of 2, 4 (quanto) or 8 (HQQ), got {self.nbits}")
        if self.q_group_size < 1 or self.residual_length < 0:
            raise ValueError("q_group_size must be >= 1 and residual_length >= 0")

    def check_backend(self) -> None:
        backend = BACKENDS[self.nbits]
        available = is_optimum_quanto_available() if backend == "quanto" else is_hqq_available()
        if not available:
            package = "optimum-quanto (pip install -e .[quanto])" if backend == "quanto" else "hqq (pip install hqq)"
            raise Unsupported(f"hf-quantized nbits={self.nbits} needs the {backend} backend: "
                              f"{package} is not installed")

    def cache_config(self) -> dict[str, Any]:
        return {"backend": BACKENDS[self.nbits], "nbits": self.nbits, "q_group_size": self.q_group_size,
                "residual_length": self.residual_length}

    def make_cache(self, model: PreTrainedModel, max_len: int) -> Cache:
        config = self.cache_config()
        return QuantizedCache(config.pop("backend"), model.config, **config)
