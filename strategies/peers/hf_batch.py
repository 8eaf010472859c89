"""`hf-batch`: the peer of `static-batch` — transformers ``generate()`` on left-padded static batches.

Requests are grouped in arrival order as `static-batch` groups them (what has arrived when the engine is free,
up to ``batch_size``); each batch generates until its longest request is done, every row's tokens are streamed
to the runner as they come, and a row stops being reported after its own ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from strategies.core.requests import Request, arrived
from strategies.core.sampling import eos_ids
from strategies.peers.hf_generate import HFGenerate, generate_kwargs


class BatchEmitStreamer(BaseStreamer):
    """Each ``put`` after the prompt carries one token per row: forward row ``b``'s to ``emit`` while it wants more."""

    def __init__(self, emit, max_new: list[int]):
        self.emit, self.max_new, self.step, self.seen_prompt = emit, max_new, 0, False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for b, token in enumerate(value.reshape(-1).tolist()):
            if self.step < self.max_new[b]:
                self.emit(b, [token])
        self.step += 1

    def end(self) -> None:
        pass


@torch.inference_mode()
def hf_padded_batch(model, prompts: list[list[int]], max_new: list[int], sampling, emit) -> list[list[int]]:
    longest = max(map(len, prompts))
    pad = (eos_ids(model) or [0])[0]
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long, device=model.device)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, longest - len(p) :] = torch.tensor(p, device=model.device)
        mask[b, longest - len(p) :] = 1
    torch.manual_seed(sampling.seed)
    out = model.generate(ids, attention_mask=mask, streamer=BatchEmitStreamer(emit, max_new), pad_token_id=pad,
                         **generate_kwargs(sampling, max(max_new)))
    return [out[b, longest : longest + max_new[b]].tolist() for b in range(len(prompts))]


@dataclass
class HFBatch(HFGenerate):
    name = "hf-batch"
    lossless = True
    takes_cache = False
    peer = True
    summary = "peer: transformers generate() on left-padded static batches of batch_size"
    batch_size: int = 8

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"hf-batch.batch_size must be >= 1, got {self.batch_size}")

    def generate(self, model, new_cache, prompts, max_new_tokens, sampling, emit) -> list[list[int]]:
        outputs: list[list[int]] = []
        for start in range(0, len(prompts), self.batch_size):
            group = prompts[start : start + self.batch_size]
            outputs += hf_padded_batch(model, group, [max_new_tokens] * len(group), sampling,
                                       lambda b, t, s=start: emit(s + b, t))
        return outputs

    def serve(self, model, new_cache, requests: list[Request], sampling, emit, clock, cache=None):
        outputs: list[list[int]] = [[] for _ in requests]
        waiting = sorted(requests, key=lambda r: (r.arrival_s, r.index))
        while waiting:
            clock.wait_until(waiting[0].arrival_s)
            group = arrived(waiting, clock)[: self.batch_size]
            waiting = [r for r in waiting if r not in group]
            tokens = hf_padded_batch(model, [list(r.prompt) for r in group], [r.max_new_tokens for r in group],
                                     sampling, lambda b, t, g=group: emit(g[b].index, t))
            for r, out in zip(group, tokens):
                outputs[r.index] = out
        return outputs
