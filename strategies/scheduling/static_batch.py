"""`static-batch`: requests grouped in arrival order, left-padded into one batch that runs until its longest
member finishes (the classic padded batch: short requests wait for long ones, padding is computed too).

Prompts are left-padded and the model gets a 2D attention mask plus per-row ``position_ids``, so every request
sees exactly its own tokens at its own positions; the cache is the given one (``full``: preallocated for the
whole batch). On a request workload a batch is formed from the requests that have arrived when the engine is
free (up to ``batch_size``); with nothing waiting it idles until the next arrival.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, Emit, Generation, NewCache, RequestEngine
from strategies.core.hf_compat import with_cache
from strategies.core.requests import Request, ServeClock, serve_in_groups
from strategies.core.sampling import Sampling, eos_ids


def pad_id(model: PreTrainedModel) -> int:
    """The id padding is written with (never attended): the first end-of-sequence id, else 0."""
    return (eos_ids(model) or [0])[0]


def left_padded(prompts: list[list[int]], pad: int, extra: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [batch, longest + extra] with each prompt right-aligned at ``longest``, and the 2D attention mask: 1 from a
    prompt's first token to the end, since the ``extra`` positions will hold generated tokens of every row."""
    batch, longest = len(prompts), max(map(len, prompts))
    ids = torch.full((batch, longest + extra), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, longest - len(p) : longest] = torch.tensor(p, device=device)
        mask[b, longest - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def run_padded_batch(model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new: list[int],
                     sampling: Sampling, emit: Emit) -> list[list[int]]:
    """Generate ``max_new[b]`` tokens for each prompt in one left-padded batch; ``emit(b, [token])`` per row."""
    device, banned = model.device, eos_ids(model)
    batch, longest, steps = len(prompts), max(map(len, prompts)), max(max_new)
    seq, mask = left_padded(prompts, pad_id(model), steps, device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    gen = sampling.generator(device)
    cache = new_cache(batch, longest + steps - 1)
    positions = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=seq[:, :longest], attention_mask=mask[:, :longest], position_ids=positions,
                **with_cache(model, cache), use_cache=True, logits_to_keep=1)
    for t in range(steps):
        if t:
            end = longest + t
            out = model(input_ids=seq[:, end - 1 : end], attention_mask=mask[:, :end],
                        position_ids=(lengths + t - 1).unsqueeze(1), **with_cache(model, cache), use_cache=True)
        tokens = sampling.select(out.logits[:, -1].float(), seq[:, : longest + t], gen, banned)
        seq[:, longest + t] = tokens
        for b in range(batch):
            if t < max_new[b]:
                emit(b, [int(tokens[b])])
    return [seq[b, longest : longest + max_new[b]].tolist() for b in range(batch)]


@dataclass
class StaticBatcher(RequestEngine):
    """Requests grouped in arrival order (what has arrived when the engine is free, up to ``batch_size``, which a
    subclass declares), each group run as one padded batch by ``padded_batch``: static-batch and its peer hf-batch."""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"{self.name}.batch_size must be >= 1, got {self.batch_size}")

    def padded_batch(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new: list[int],
                     sampling: Sampling, emit: Emit) -> list[list[int]]:
        raise NotImplementedError

    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        def run_batch(prompts: list[list[int]], max_new: list[int], emit_row: Emit) -> list[list[int]]:
            return self.padded_batch(model, new_cache, prompts, max_new, sampling, emit_row)

        return Generation(serve_in_groups(run_batch, requests, emit, clock, self.batch_size))


@dataclass
class StaticBatch(StaticBatcher):
    name = "static-batch"
    lossless = True
    summary = "padded static batches in arrival order; each batch runs until its longest request finishes"
    batch_size: int = field(default=8, metadata={
        "help": "requests padded into one batch in arrival order; a batch runs until its longest finishes, >= 1"})

    def padded_batch(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new: list[int],
                     sampling: Sampling, emit: Emit) -> list[list[int]]:
        return run_padded_batch(model, new_cache, prompts, max_new, sampling, emit)
