"""`hf-generate`: the peer row — transformers' own ``generate()`` with its default cache, greedy or sampled."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache, PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from strategies.core.base import DecodingStrategy, Emit, Generation, NewCache
from strategies.core.hf_compat import with_cache
from strategies.core.sampling import Sampling


class EmitStreamer(BaseStreamer):
    """Forwards each new token from ``generate`` to the runner's ``emit`` (the first ``put`` is the prompt)."""

    def __init__(self, emit: Emit, request: int):
        self.emit, self.request, self.seen_prompt = emit, request, False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.emit(self.request, value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def generate_kwargs(sampling: Sampling, max_new_tokens: int) -> dict:
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                  do_sample=not sampling.is_greedy, top_k=None, top_p=None, temperature=None)
    if not sampling.is_greedy:
        kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k or None, top_p=sampling.top_p,
                      min_p=sampling.min_p or None)
    if sampling.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = sampling.repetition_penalty
    return kwargs


@dataclass
class HFGenerate(DecodingStrategy):
    name = "hf-generate"
    lossless = True
    takes_cache = False
    peer = True
    summary = "peer: transformers generate() with its default dynamic cache"

    def extra_kwargs(self, model: PreTrainedModel) -> dict:
        """More ``generate`` options (peers built on this one: assisted generation, prompt lookup)."""
        return {}

    def make_cache(self, model: PreTrainedModel, max_len: int) -> Cache:
        """The cache ``score`` reads through: the one ``generate`` builds by default, transformers' DynamicCache."""
        return DynamicCache(config=model.config)

    @torch.inference_mode()
    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        outputs = []
        for i, prompt in enumerate(prompts):
            torch.manual_seed(sampling.seed)
            ids = torch.tensor([prompt], device=model.device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), streamer=EmitStreamer(emit, i),
                                 pad_token_id=model.config.eos_token_id, **generate_kwargs(sampling, max_new_tokens),
                                 **self.extra_kwargs(model))
            outputs.append(out[0, len(prompt):].tolist())
        return Generation(outputs)

    @torch.inference_mode()
    def score(
        self, model: PreTrainedModel, new_cache: NewCache, prompt_ids: list[int], continuation_ids: list[int]
    ) -> torch.Tensor:
        """Through transformers' own cache (``make_cache``): prefill, then one token per forward."""
        n, m = len(prompt_ids), len(continuation_ids)
        cache = self.make_cache(model, n + m)
        ids = torch.tensor([prompt_ids + continuation_ids], device=model.device)
        rows = [model(input_ids=ids[:, :n], **with_cache(model, cache), logits_to_keep=1).logits[0, -1]]
        for t in range(1, m):
            rows.append(model(input_ids=ids[:, n + t - 1 : n + t], **with_cache(model, cache)).logits[0, -1])
        return torch.stack(rows).float().log_softmax(-1)
