"""`hf-batch`: the peer of `static-batch` — transformers ``generate()`` on left-padded static batches.

Requests are grouped in arrival order as `static-batch` groups them (what has arrived when the engine is free,
up to ``batch_size``); each batch generates until its longest request is done, every row's tokens are streamed
to the runner as they come, and a row stops being reported after its own ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from strategies.core.base import Emit, NewCache
from strategies.core.sampling import Sampling
from strategies.peers.hf_generate import HFGenerate, generate_kwargs
from strategies.scheduling.static_batch import StaticBatcher, left_padded, pad_id


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
def hf_padded_batch(model: PreTrainedModel, prompts: list[list[int]], max_new: list[int], sampling: Sampling,
                    emit: Emit) -> list[list[int]]:
    longest = max(map(len, prompts))
    pad = pad_id(model)
    ids, mask = left_padded(prompts, pad, 0, model.device)
    torch.manual_seed(sampling.seed)
    out = model.generate(ids, attention_mask=mask, streamer=BatchEmitStreamer(emit, max_new), pad_token_id=pad,
                         **generate_kwargs(sampling, max(max_new)))
    return [out[b, longest : longest + max_new[b]].tolist() for b in range(len(prompts))]


@dataclass
class HFBatch(StaticBatcher, HFGenerate):
    name = "hf-batch"
    lossless = True
    takes_cache = False
    peer = True
    summary = "peer: transformers generate() on left-padded static batches of batch_size"
    batch_size: int = field(default=8, metadata={"help": "requests per left-padded generate() batch, >= 1"})

    def padded_batch(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new: list[int],
                     sampling: Sampling, emit: Emit) -> list[list[int]]:
        return hf_padded_batch(model, prompts, max_new, sampling, emit)  # transformers' own cache
