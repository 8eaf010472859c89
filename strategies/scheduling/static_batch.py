"""`static-batch`: requests grouped in arrival order, left-padded into one batch that runs until its longest
member finishes (the classic padded batch: short requests wait for long ones, padding is computed too).

Prompts are left-padded and the model gets a 2D attention mask plus per-row ``position_ids``, so every request
sees exactly its own tokens at its own positions; the cache is the given one (``full``: preallocated for the
whole batch). On a request workload a batch is formed from the requests that have arrived when the engine is
free (up to ``batch_size``); with nothing waiting it idles until the next arrival.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from strategies.core.base import DecodingStrategy, Emit, NewCache
from strategies.core.hf_compat import with_cache
from strategies.core.requests import Request, arrived
from strategies.core.sampling import Sampling, eos_ids


@torch.inference_mode()
def run_padded_batch(model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new: list[int],
                     sampling: Sampling, emit: Emit) -> list[list[int]]:
    """Generate ``max_new[b]`` tokens for each prompt in one left-padded batch; ``emit(b, [token])`` per row."""
    device, banned = model.device, eos_ids(model)
    batch, longest, steps = len(prompts), max(map(len, prompts)), max(max_new)
    pad = banned[0] if banned else 0
    seq = torch.full((batch, longest + steps), pad, dtype=torch.long, device=device)
    mask = torch.zeros(batch, longest + steps, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        seq[b, longest - len(p) : longest] = torch.tensor(p, device=device)
        mask[b, longest - len(p) :] = 1  # generated positions are real tokens of every row
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
class StaticBatch(DecodingStrategy):
    name = "static-batch"
    lossless = True
    summary = "padded static batches in arrival order; each batch runs until its longest request finishes"
    batch_size: int = 8

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"static-batch.batch_size must be >= 1, got {self.batch_size}")

    def generate(self, model, new_cache, prompts, max_new_tokens, sampling, emit) -> list[list[int]]:
        outputs: list[list[int]] = []
        for start in range(0, len(prompts), self.batch_size):
            group = prompts[start : start + self.batch_size]
            outputs += run_padded_batch(model, new_cache, group, [max_new_tokens] * len(group), sampling,
                                        lambda b, t, s=start: emit(s + b, t))
        return outputs

    def serve(self, model, new_cache, requests: list[Request], sampling, emit, clock, cache=None):
        outputs: list[list[int]] = [[] for _ in requests]
        waiting = sorted(requests, key=lambda r: (r.arrival_s, r.index))
        while waiting:
            clock.wait_until(waiting[0].arrival_s)
            group = arrived(waiting, clock)[: self.batch_size]
            waiting = [r for r in waiting if r not in group]
            tokens = run_padded_batch(model, new_cache, [list(r.prompt) for r in group],
                                      [r.max_new_tokens for r in group], sampling,
                                      lambda b, t, g=group: emit(g[b].index, t))
            for r, out in zip(group, tokens):
                outputs[r.index] = out
        return outputs
