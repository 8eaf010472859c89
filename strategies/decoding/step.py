"""`step`: the lean decode loop (gpt-fast's shape): prefill once, then one token per forward over the cache.

With ``naive``'s cache (None) each step recomputes the whole sequence instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.base import DecodingStrategy, Emit, Generation, NewCache
from strategies.core.forward import decode_one_token, prefill
from strategies.core.sampling import Sampling, eos_ids
from strategies.kernels.lean_forward import lean_decoder


@dataclass
class StepDecoding(DecodingStrategy):
    name = "step"
    lossless = True
    summary = "one token per forward over the given cache (the default decoder)"
    forward: str = field(default="auto", metadata={
        "help": "auto: our lean llama-family decode forward where model and cache allow; hf: transformers' forward"})

    def validate(self) -> None:
        if self.forward not in ("auto", "hf"):
            raise ValueError(f"forward must be 'auto' or 'hf', got {self.forward!r}")

    @torch.inference_mode()
    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        device = model.device
        outputs, banned, decode_forward = [], eos_ids(model), ""
        for i, prompt in enumerate(prompts):
            gen = sampling.generator(device)
            n = len(prompt)
            seq = torch.empty(1, n + max_new_tokens, dtype=torch.long, device=device)
            seq[0, :n] = torch.tensor(prompt, device=device)
            cache = new_cache(1, n + max_new_tokens - 1)  # the last token is emitted, never cached
            lean = lean_decoder(model, cache) if self.forward == "auto" else None
            decode_forward = "lean" if lean else "transformers" if cache is not None else "recompute"
            logits = prefill(model, cache, seq[:, :n])
            for t in range(max_new_tokens):
                if t:
                    logits = decode_one_token(model, cache, seq, n + t, lean)
                token = int(sampling.select(logits, seq[:, : n + t], gen, banned))
                seq[0, n + t] = token
                emit(i, [token])
            outputs.append(seq[0, n:].tolist())
        return Generation(outputs, {"decode_forward": decode_forward})
