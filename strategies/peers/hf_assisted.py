"""Peer rows for the speculating decoders: transformers' assisted generation and prompt lookup, run through
``hf-generate``'s path (same streamer, same sampling options) with its own dynamic caches.

- `hf-assisted`: ``generate(assistant_model=...)`` with the same drafts as ``speculative`` (a layer-truncated draft
  is a separate model object for transformers), ``k`` drafts per step on the constant schedule (transformers'
  default adapts ``k`` by a heuristic; constant keeps the comparison with ``speculative`` like for like).
- `hf-prompt-lookup`: ``generate(prompt_lookup_num_tokens=k, max_matching_ngram_size=ngram)``.
Target forwards are counted with a forward hook on the target (the draft is another module object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel

from strategies.core.sampling import Sampling
from strategies.decoding.drafts import build_draft, parse_layers
from strategies.peers.hf_generate import HFGenerate


class _CountsTargetForwards(HFGenerate):
    def generate(self, model: PreTrainedModel, new_cache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit) -> list[list[int]]:
        calls = 0

        def count(module, args, output):
            nonlocal calls
            calls += module is model

        handle = model.register_forward_hook(count)
        try:
            outputs = super().generate(model, new_cache, prompts, max_new_tokens, sampling, emit)
        finally:
            handle.remove()
        tokens = sum(map(len, outputs))
        steps = max(calls - len(prompts), 1)  # one prefill per prompt, then one verify forward per step
        self._stats = {"target_forwards": calls, "target_forwards_per_token": calls / max(tokens, 1),
                       "mean_accepted_len": (tokens - len(prompts)) / steps}
        return outputs

    def stats(self) -> dict[str, Any]:
        return getattr(self, "_stats", {})


@dataclass
class HFAssisted(_CountsTargetForwards):
    name = "hf-assisted"
    summary = "peer: transformers assisted generation (assistant_model) with speculative's drafts"

    draft: str = "layers:8"
    k: int = 4

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (draft tokens per step) must be >= 1, got {self.k}")
        parse_layers(self.draft)

    def extra_kwargs(self, model: PreTrainedModel) -> dict:
        built = getattr(self, "_built", None)
        if built is None or built[0] is not model:
            self._built = built = (model, build_draft(model, self.draft))
        return dict(assistant_model=built[1], num_assistant_tokens=self.k,
                    num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)


@dataclass
class HFPromptLookup(_CountsTargetForwards):
    name = "hf-prompt-lookup"
    summary = "peer: transformers prompt lookup decoding (prompt_lookup_num_tokens)"

    ngram: int = 3
    k: int = 10

    def validate(self) -> None:
        if self.ngram < 1 or self.k < 1:
            raise ValueError(f"ngram and k must be >= 1, got ngram={self.ngram}, k={self.k}")

    def extra_kwargs(self, model: PreTrainedModel) -> dict:
        return dict(prompt_lookup_num_tokens=self.k, max_matching_ngram_size=self.ngram)


