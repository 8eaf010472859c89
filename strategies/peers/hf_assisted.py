"""Peer rows for the speculating decoders: transformers' assisted generation and prompt lookup, run through
``hf-generate``'s path (same streamer, same sampling options) with its own dynamic caches.

- `hf-assisted`: ``generate(assistant_model=...)`` with the same drafts as ``speculative`` (a layer-truncated draft
  is a separate model object for transformers), ``k`` drafts per step on the constant schedule (transformers'
  default adapts ``k`` by a heuristic; constant keeps the comparison with ``speculative`` like for like).
- `hf-prompt-lookup`: ``generate(prompt_lookup_num_tokens=k, max_matching_ngram_size=ngram)``.
Target forwards are counted with a forward hook on the target (the draft is another module object).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, Emit, Generation, NewCache
from strategies.core.requests import Request, ServeClock
from strategies.core.sampling import Sampling
from strategies.decoding.drafts import LoadModel, PreparedDraft, draft_for, parse_layers, prepare_draft
from strategies.peers.hf_generate import HFGenerate


def counting_target_forwards(model: PreTrainedModel, run: Callable[[], Generation]) -> Generation:
    """``run()``'s tokens with the target's forwards counted over the whole call (a forward hook on the target)."""
    calls = 0

    def count(module, args, output):
        nonlocal calls
        calls += module is model

    handle = model.register_forward_hook(count)
    try:
        out = run()
    finally:
        handle.remove()
    tokens, prompts = sum(map(len, out.tokens)), len(out.tokens)
    steps = max(calls - prompts, 1)  # one prefill per prompt, then one verify forward per step
    return Generation(out.tokens, {"target_forwards": calls, "target_forwards_per_token": calls / max(tokens, 1),
                                   "mean_accepted_len": (tokens - prompts) / steps}, out.failures)


class _CountsTargetForwards(HFGenerate):
    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        generate = super().generate
        return counting_target_forwards(
            model, lambda: generate(model, new_cache, prompts, max_new_tokens, sampling, emit))

    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        serve = super().serve  # one request after another, counted over all of them (not the last one's)
        return counting_target_forwards(model, lambda: serve(model, new_cache, requests, sampling, emit, clock, cache))


@dataclass
class HFAssisted(_CountsTargetForwards):
    name = "hf-assisted"
    summary = "peer: transformers assisted generation (assistant_model) with speculative's drafts"

    draft: str = field(default="layers:8", metadata={
        "help": "assistant model, as speculative.draft: layers:N, int8, bf16 or a model spec sharing the tokenizer"})
    k: int = field(
        default=4, metadata={"help": "assistant tokens per step (num_assistant_tokens, constant schedule), >= 1"})
    # built by prepare() (not a parameter): the draft and the target it belongs to
    prepared: PreparedDraft | None = field(default=None, init=False, repr=False, compare=False)

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (draft tokens per step) must be >= 1, got {self.k}")
        parse_layers(self.draft)

    def prepare(self, model: PreTrainedModel, load: LoadModel | None = None) -> None:
        self.prepared = prepare_draft(self.prepared, model, self.draft, load)

    def extra_kwargs(self, model: PreTrainedModel) -> dict:
        return dict(assistant_model=draft_for(self.prepared, model, self.name), num_assistant_tokens=self.k,
                    num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)


@dataclass
class HFPromptLookup(_CountsTargetForwards):
    name = "hf-prompt-lookup"
    summary = "peer: transformers prompt lookup decoding (prompt_lookup_num_tokens)"

    ngram: int = field(
        default=3, metadata={"help": "longest n-gram matched in the prompt (max_matching_ngram_size), >= 1"})
    k: int = field(default=10, metadata={"help": "tokens drafted per match (prompt_lookup_num_tokens), >= 1"})

    def validate(self) -> None:
        if self.ngram < 1 or self.k < 1:
            raise ValueError(f"ngram and k must be >= 1, got ngram={self.ngram}, k={self.k}")

    def extra_kwargs(self, model: PreTrainedModel) -> dict:
        return dict(prompt_lookup_num_tokens=self.k, max_matching_ngram_size=self.ngram)


