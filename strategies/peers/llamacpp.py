"""`llamacpp`: llama.cpp (through llama-cpp-python) on the model's own GGUF, as an engine peer row.

Same prompts (token ids, fed as ids: no re-tokenizing), same ``max_new_tokens`` with EOS suppressed (a logits
processor sets its logit to -inf), greedy or llama.cpp's own sampler. ``quant`` picks the file: ``q4_1`` is the
embedded model as shipped; ``f32`` is exactly kvbench's own fp32 weights (the shipped file dequantized), ``bf16``
and ``q8_0`` derive from it (strategies/peers/gguf_files.py); every file is written once into the GGUF's cache.
Quality is scored through llama.cpp's own KV cache: the prompt and continuation are evaluated with logits kept
for every position. Tokens may differ from ours (other kernels, other rounding): the row's agreement says how
much. Built from source (optional extra ``llamacpp``); see the Makefile's ``llamacpp`` target for the AMX fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from strategies.core.base import DecodingStrategy, Emit, Generation, NewCache, Unsupported
from strategies.core.sampling import Sampling, eos_ids
from strategies.peers.gguf_files import decode_weight_bytes

QUANTS = ("f32", "bf16", "q8_0", "q4_1")
INSTALL = "pip install 'kvbench[llamacpp]' (builds llama.cpp from source; `make llamacpp` applies the AMX fix)"


def gguf_variant(source: Path, quant: str, cache_dir: Path) -> Path:
    """The GGUF of ``source``'s model at ``quant``, written once into ``cache_dir``."""
    from strategies.peers.gguf_files import FLOAT_KINDS, write_float_gguf

    if source.name.lower().endswith(f".{quant}.gguf"):
        return source
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{source.stem.rsplit('.', 1)[0]}.{quant}.gguf"
    if target.exists():
        return target
    if quant in FLOAT_KINDS:
        return write_float_gguf(source, target, quant)
    import llama_cpp

    f32 = gguf_variant(source, "f32", cache_dir)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    tmp = target.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {f32} to {quant}")
    os.replace(tmp, target)
    return target


@dataclass
class LlamaCpp(DecodingStrategy):
    name = "llamacpp"
    lossless = False  # another engine's kernels: agreement is measured, not assumed
    takes_cache = False
    peer = True
    summary = "peer: llama.cpp (llama-cpp-python) on the model's GGUF at quant f32/bf16/q8_0/q4_1"
    quant: str = field(default="f32", metadata={"help": f"GGUF precision: {', '.join(QUANTS)}"})
    n_ctx: int = field(default=4096, metadata={"help": "llama.cpp context (KV slots reserved), >= 64"})
    _llm: Any = field(default=None, init=False, repr=False)
    _path: Path | None = field(default=None, init=False, repr=False)
    _weight_bytes: int = field(default=0, init=False, repr=False)

    def validate(self) -> None:
        if self.quant not in QUANTS:
            raise ValueError(f"llamacpp.quant must be one of {', '.join(QUANTS)}, got {self.quant!r}")
        if self.n_ctx < 64:
            raise ValueError(f"llamacpp.n_ctx must be >= 64, got {self.n_ctx}")

    def prepare(self, model: PreTrainedModel, load: Any = None) -> None:
        source = getattr(model, "kvbench_gguf", None)
        if source is None:
            raise Unsupported("llamacpp runs a model's GGUF file; this model was not loaded from one")
        try:
            import llama_cpp
        except ImportError:
            raise Unsupported(f"llama-cpp-python is not installed: {INSTALL}") from None
        # --dtype and --weight-quant set our torch model's precision; llama.cpp's is the GGUF's (llamacpp.quant)
        if model.dtype != torch.float32:
            raise Unsupported(f"llamacpp runs the GGUF at llamacpp.quant's precision, not --dtype "
                              f"{str(model.dtype).removeprefix('torch.')} (bf16 is llamacpp.quant=bf16)")
        if (quant := getattr(model, "_kvbench_weight_quant", "none")) != "none":
            raise Unsupported(f"llamacpp runs the GGUF at llamacpp.quant's precision, not --weight-quant {quant} "
                              f"(int8/int4 weights are llamacpp.quant=q8_0/q4_1)")
        cache = Path(os.environ.get("KVBENCH_CACHE", Path.home() / ".cache" / "kvbench")) / "gguf"
        self._path = gguf_variant(Path(source), self.quant, cache)
        self._weight_bytes = decode_weight_bytes(self._path)  # read once here, never inside a timed generate
        self._llm = llama_cpp.Llama(str(self._path), n_ctx=self.n_ctx, n_threads=torch.get_num_threads(),
                                    n_threads_batch=torch.get_num_threads(), logits_all=False, verbose=False)
        self._banned = eos_ids(model)

    @property
    def gguf_bytes(self) -> int:
        return self._path.stat().st_size if self._path else 0

    def _ban_eos(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores[list(self._banned)] = -np.inf
        return scores

    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        import llama_cpp

        if self._llm is None:
            self.prepare(model)
        outputs = []
        processors = llama_cpp.LogitsProcessorList([self._ban_eos])
        for i, prompt in enumerate(prompts):
            if len(prompt) + max_new_tokens > self.n_ctx:
                raise Unsupported(f"llamacpp.n_ctx={self.n_ctx} < {len(prompt) + max_new_tokens} tokens needed")
            self._llm.set_seed(sampling.seed)
            greedy = sampling.is_greedy
            tokens: list[int] = []
            for token in self._llm.generate(prompt, reset=True, temp=0.0 if greedy else sampling.temperature,
                                            top_k=1 if greedy else sampling.top_k, top_p=sampling.top_p,
                                            min_p=sampling.min_p, repeat_penalty=sampling.repetition_penalty,
                                            logits_processor=processors):
                tokens.append(int(token))
                emit(i, [int(token)])
                if len(tokens) == max_new_tokens:
                    break
            outputs.append(tokens)
        # weight_bytes: what llama.cpp reads per step at this quant (the row's roofline), not our torch model's
        return Generation(outputs, {"gguf_bytes": self.gguf_bytes, "gguf_quant": self.quant,
                                    "weight_bytes": self._weight_bytes})

    def score(self, model: PreTrainedModel, new_cache: NewCache, prompt_ids: list[int],
              continuation_ids: list[int]) -> torch.Tensor:
        """Log-probs of each continuation position from llama.cpp's own cache: eval prompt + continuation[:-1] in
        one context kept for every position (a second context: logits for all tokens cost n_ctx × vocab floats)."""
        import llama_cpp

        n, m = len(prompt_ids), len(continuation_ids)
        scorer = llama_cpp.Llama(str(self._path), n_ctx=max(64, n + m), n_threads=torch.get_num_threads(),
                                 logits_all=True, verbose=False)
        scorer.eval(prompt_ids + continuation_ids[:-1])
        logits = torch.from_numpy(np.array(scorer.scores[n - 1 : n - 1 + m], dtype=np.float32))
        scorer.close()
        return logits.log_softmax(-1)
