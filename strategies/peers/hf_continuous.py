"""`hf-continuous`: the peer of `continuous` — transformers' own continuous-batching manager (paged cache,
its scheduler, a background generation thread), fed requests as they arrive and streamed back token by token.

Timestamps are taken when a streamed token reaches us (the client's view). EOS neither ends a request nor can be
chosen, so each generates exactly its ``max_new_tokens`` tokens — the same rule as every other row. If the
installed transformers cannot run it on this device, the cell reports the error (status failed) rather than a
number.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, Emit, Generation, NewCache, RequestEngine
from strategies.core.requests import Request, ServeClock, in_arrival_order
from strategies.core.sampling import Sampling, eos_ids
from strategies.peers.hf_generate import HFGenerate


@dataclass
class HFContinuous(RequestEngine, HFGenerate):
    name = "hf-continuous"
    lossless = True
    summary = "peer: transformers' continuous-batching manager (generate_batch's engine), requests added on arrival"
    max_batch: int = field(
        default=16, metadata={"help": "most requests per step (max_requests_per_batch), as continuous.max_batch, >= 1"})
    num_blocks: int = field(
        default=32, metadata={"help": "cache pages reserved, of transformers' 256 tokens each, >= 1"})
    max_batch_tokens: int = field(default=1024, metadata={"help": "most prompt + new tokens computed per step, >= 1"})

    def validate(self) -> None:
        for key in ("max_batch", "num_blocks", "max_batch_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"hf-continuous.{key} must be >= 1, got {getattr(self, key)}")

    @torch.inference_mode()
    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        # EOS never ends a request (eos_token_id=-1) and is never chosen (suppress_tokens), as generate's
        # min_new_tokens does for hf-generate: without the ban it emits EOS as a token and carries on past it.
        config = GenerationConfig(do_sample=not sampling.is_greedy, max_new_tokens=max(r.max_new_tokens
                                  for r in requests), eos_token_id=-1, pad_token_id=0,
                                  suppress_tokens=sorted(eos_ids(model)))
        if not sampling.is_greedy:
            config.temperature, config.top_p = sampling.temperature, sampling.top_p
        sizes = ContinuousBatchingConfig(num_blocks=self.num_blocks, max_batch_tokens=self.max_batch_tokens,
                                         max_requests_per_batch=self.max_batch)  # else it sizes to 60% of RAM
        # it warns that it cannot vouch for SuppressTokensLogitsProcessor; tests/test_serving.py checks it
        logging.getLogger("ContinuousBatchingLogger").setLevel(logging.ERROR)
        manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=sizes)
        outputs: list[list[int]] = [[] for _ in requests]
        emitted = [0] * len(requests)
        pending = deque(in_arrival_order(requests))
        manager.start()
        try:
            done = 0
            while done < len(requests):
                now = clock.now()
                while pending and pending[0].arrival_s <= now:
                    r = pending.popleft()
                    manager.add_request(list(r.prompt), request_id=f"r{r.index}", max_new_tokens=r.max_new_tokens,
                                        streaming=True, eos_token_id=-1)
                result = manager.get_result(timeout=0.002)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("transformers' continuous-batching thread stopped: "
                                           f"{manager.background_thread_status.fatal_error}")
                    continue
                if result.error:
                    raise RuntimeError(f"transformers' continuous batching failed a request: {result.error}")
                i = int(result.request_id[1:])
                new = result.generated_tokens[emitted[i]:]
                if new:
                    emit(i, new)
                    emitted[i] += len(new)
                if result.is_finished():
                    outputs[i] = list(result.generated_tokens)
                    done += 1
        finally:
            manager.stop(block=True, timeout=10)
            model.destroy_cached_continuous_batching_manager()
            if hasattr(manager, "destroy"):
                manager.destroy()
        return Generation(outputs)
