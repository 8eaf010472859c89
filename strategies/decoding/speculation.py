"""Draft-then-verify, shared by every speculating decoder (speculative, prompt-lookup; lookahead uses its stats).

A *proposer* guesses up to ``k`` next tokens; the target scores the last token plus all guesses in ONE forward
through its cache (explicit positions), keeps the accepted prefix plus one token of its own, and the cache is
rolled back past the first rejection with ``crop(-n)``. Acceptance is the rejection-sampling rule of Leviathan
et al. / Chen et al. (``accept_drafts``), so the output follows the target's distribution; under greedy both
distributions are one-hot and it reduces to "keep drafts while they equal the target's argmax".

Only ``new_cache``, the model forward (which calls ``update``), ``get_seq_length`` and ``crop`` touch the cache,
so this runs over any cache strategy. The per-phase milliseconds are the decoder's own diagnostics (read with
``perf_counter`` around drafting and verifying), not the row's latency: the runner still times every emitted
token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import Cache, PreTrainedModel

from strategies.core.base import CacheStrategy, DecodingStrategy, Emit, Generation, NewCache
from strategies.core.forward import forward_logits, prefill
from strategies.core.requests import Request, ServeClock, serve_one_by_one
from strategies.core.sampling import Sampling, draw, eos_ids
from strategies.kernels.lean_verify import lean_hidden


class Proposer(Protocol):
    def propose(self, seq: torch.Tensor, length: int, max_drafts: int) -> tuple[list[int], torch.Tensor | None]:
        """Up to ``max_drafts`` tokens continuing ``seq[0, :length]`` and the distributions [m, vocab] they were
        drawn from (None: chosen deterministically). May scribble on ``seq`` past ``length``."""
        ...

    def accepted(self, length: int, predicted: list[int], num_accepted: int) -> None:
        """``seq[0, :length]`` is now final: forget any state past it. ``predicted``: the target's most likely
        token at every position of the verify forward (the first ``num_accepted`` equal the accepted drafts)."""
        ...


def accept_drafts(p: torch.Tensor, q: torch.Tensor, drafts: list[int],
                  generator: torch.Generator | None = None) -> tuple[int, int]:
    """Rejection sampling over one speculation step: (number of drafts accepted, the token that follows them).

    ``p`` [m+1, vocab] are the target's distributions at each draft position and one past the last, ``q`` [m, vocab]
    the draft's. Draft ``j`` is kept with probability min(1, p/q); at the first rejection the next token is drawn
    from norm(max(0, p - q)); if all are kept it is drawn from ``p[m]``. The result is distributed as ``p``.
    """
    for j, d in enumerate(drafts):
        if torch.rand((), generator=generator) * q[j, d] < p[j, d]:
            continue
        residual = (p[j] - q[j]).clamp_min(0)
        total = residual.sum()
        return j, int(draw(residual / total if total > 0 else p[j], generator))
    return len(drafts), int(draw(p[len(drafts)], generator))


def one_hot(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.zeros(len(tokens), vocab).scatter_(1, torch.tensor(tokens).view(-1, 1), 1.0)


@dataclass
class SpeculationStats:
    """Counts over one ``generate`` or ``serve`` call (all its requests), and the breakdown every speculating row
    carries (Spec-Bench issue #29: more accepted tokens can still mean a lower speedup, so the costs stand next to
    the acceptance). ``plain_step_s``: one plain decode forward of the target, timed by ``prepare`` (untimed
    setup), the cost a step decoder pays per token; the predicted speedup is tokens per step × that / step cost."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    target_forwards: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    step_s: float = 0.0  # whole steps: drafting, verifying and the bookkeeping around them
    accepted_hist: list[int] = field(default_factory=list)  # [n]: steps that kept n drafts
    offered_by_pos: list[int] = field(default_factory=list)  # [j]: steps that offered a draft at depth j+1
    accepted_by_pos: list[int] = field(default_factory=list)  # [j]: steps that kept the draft at depth j+1
    plain_step_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # decoder-specific figures (heads' bytes, training time)

    def record(self, depth: int, drafted: int, accepted: int, draft_s: float, verify_s: float, step_s: float) -> None:
        """One verify step that offered drafts up to ``depth`` (``drafted`` tokens in all) and kept ``accepted``."""
        for counts, n in ((self.accepted_hist, accepted + 1), (self.offered_by_pos, depth),
                          (self.accepted_by_pos, accepted)):
            counts.extend([0] * (n - len(counts)))
        self.accepted_hist[accepted] += 1
        for j in range(depth):
            self.offered_by_pos[j] += 1
        for j in range(accepted):
            self.accepted_by_pos[j] += 1
        self.steps, self.drafted, self.accepted = self.steps + 1, self.drafted + drafted, self.accepted + accepted
        self.target_forwards, self.emitted = self.target_forwards + 1, self.emitted + accepted + 1
        self.draft_s, self.verify_s = self.draft_s + draft_s, self.verify_s + verify_s
        self.step_s += step_s

    def row(self) -> dict[str, Any]:
        steps = max(self.steps, 1)
        mean_len = (self.accepted + self.steps) / steps  # tokens kept per verify forward
        step_ms = 1000 * self.step_s / steps
        predicted = mean_len * 1000 * self.plain_step_s / step_ms if self.plain_step_s and step_ms else 0.0
        by_pos = [a / o if o else 0.0 for a, o in zip(self.accepted_by_pos + [0] * len(self.offered_by_pos),
                                                        self.offered_by_pos)]
        return {
            "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
            "mean_accepted_len": mean_len,
            "accepted_len_hist": " ".join(f"{n}:{c}" for n, c in enumerate(self.accepted_hist) if c),
            "acceptance_by_pos": " ".join(f"{x:.2f}" for x in by_pos),
            "draft_ms_per_step": 1000 * self.draft_s / steps,
            "verify_ms_per_step": 1000 * self.verify_s / steps,
            "overhead_ms_per_step": max(0.0, step_ms - 1000 * (self.draft_s + self.verify_s) / steps),
            "plain_step_ms": 1000 * self.plain_step_s,
            "speedup_predicted": predicted,
            "target_forwards": self.target_forwards,
            "target_forwards_per_token": self.target_forwards / max(self.emitted, 1),
            **self.extra,
        }


@torch.inference_mode()
def plain_step_seconds(model: PreTrainedModel, context: int = 64, repeats: int = 5) -> float:
    """The fastest of ``repeats`` one-token decode forwards of ``model`` over a full cache holding ``context``
    tokens, through the forward ``step`` would use (lean where it applies): the cost a speculating step competes
    with. Called from ``prepare``, before warm-up, so it never lands in the measured run."""
    from strategies.caches.full import PreallocatedLayer  # a plain full cache, whatever this decoder runs over
    from strategies.core.base import KVCache, num_cache_layers
    from strategies.core.forward import decode_one_token
    from strategies.kernels.lean_forward import lean_decoder

    cache = KVCache([PreallocatedLayer(context + repeats) for _ in range(num_cache_layers(model.config))])
    seq = torch.full((1, context + repeats), 1, dtype=torch.long, device=model.device)
    lean = lean_decoder(model, cache)
    prefill(model, cache, seq[:, :context])
    best = float("inf")
    for t in range(repeats):
        t0 = time.perf_counter()
        decode_one_token(model, cache, seq, context + t + 1, lean)
        best = min(best, time.perf_counter() - t0)
    return best


def verify_logits(model: PreTrainedModel, cache: Cache | None, seq: torch.Tensor, length: int, m: int) -> torch.Tensor:
    """Target logits [m+1, vocab] after ``seq[length-1]`` and each of the ``m`` drafts behind it, one forward."""
    if cache is None:  # naive: recompute the whole sequence
        return forward_logits(model, seq[:, : length + m], None, 0, all_logits=True)[length - 1 :]
    ids = seq[:, length - 1 : length + m]
    hidden = lean_hidden(model, cache, ids, torch.arange(length - 1, length + m, device=ids.device)[None])
    if hidden is not None:  # the lean path: transformers' per-call overhead is most of a verify's extra cost
        return model.get_output_embeddings()(hidden).float()
    return forward_logits(model, ids, cache, length - 1, all_logits=True)


def speculate(model: PreTrainedModel, cache: Cache | None, prompt: list[int], max_new_tokens: int,
              sampling: Sampling, proposer_for, k: int, emit, stats: SpeculationStats) -> list[int]:
    """Generate exactly ``max_new_tokens`` after ``prompt``; ``emit(tokens)`` after the prefill and every step."""
    device, banned = model.device, eos_ids(model)
    gen = sampling.generator(device)
    n, end = len(prompt), len(prompt) + max_new_tokens
    seq = torch.empty(1, end, dtype=torch.long, device=device)
    seq[0, :n] = torch.tensor(prompt, device=device)
    proposer: Proposer = proposer_for(seq, end, gen, banned)
    first = int(sampling.select(prefill(model, cache, seq[:, :n]), seq[:, :n], gen, banned))
    seq[0, n], length = first, n + 1
    stats.target_forwards, stats.emitted = stats.target_forwards + 1, stats.emitted + 1
    emit([first])
    while length < end:
        t0 = time.perf_counter()
        # the target adds one token of its own to the accepted drafts: never propose past the end
        drafts, q = proposer.propose(seq, length, min(k, end - length - 1))
        t1 = time.perf_counter()
        m = len(drafts)
        seq[0, length : length + m] = torch.tensor(drafts, dtype=torch.long, device=device)
        logits = verify_logits(model, cache, seq, length, m)
        p = torch.stack([sampling.distribution(logits[j], seq[:, : length + j], banned) for j in range(m + 1)])
        a, token = accept_drafts(p, one_hot(drafts, p.shape[-1]) if q is None else q, drafts, gen)
        if cache is not None and m > a:
            cache.crop(a - m)  # the cache holds seq[:length+m]; keep seq[:length+a]
        new = drafts[:a] + [token]
        seq[0, length + a] = token
        length += a + 1
        t2 = time.perf_counter()
        proposer.accepted(length, p.argmax(-1).tolist(), a)
        stats.record(m, m, a, t1 - t0, t2 - t1, time.perf_counter() - t0)
        emit(new)
    return seq[0, n:].tolist()


class SpeculativeDecoder(DecodingStrategy):
    """Base of the speculating decoders: a subclass supplies ``k`` and ``proposer``; scoring is the step path
    (verification reads the same cache a step decoder would)."""

    lossless = True
    plain_step_s = 0.0  # set by prepare (not a parameter): see SpeculationStats

    def prepare(self, model: PreTrainedModel, load=None) -> None:
        self.plain_step_s = plain_step_seconds(model)

    def proposer(self, model: PreTrainedModel, seq: torch.Tensor, end: int, generator: torch.Generator,
                 banned: list[int], sampling: Sampling) -> Proposer:
        raise NotImplementedError

    @torch.inference_mode()
    def speculate_each(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]],
                       max_new_tokens: int, sampling: Sampling, emit: Emit, stats: SpeculationStats) -> list[list[int]]:
        """Tokens per prompt, one prompt after another, counting into ``stats``."""
        outputs = []
        for i, prompt in enumerate(prompts):
            cache = new_cache(1, len(prompt) + max_new_tokens - 1)  # never more than a step decoder's cache holds

            def proposer_for(seq, end, gen, banned):
                return self.proposer(model, seq, end, gen, banned, sampling)

            outputs.append(speculate(model, cache, prompt, max_new_tokens, sampling, proposer_for, self.k,
                                     lambda tokens, i=i: emit(i, tokens), stats))
        return outputs

    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        stats = SpeculationStats(plain_step_s=self.plain_step_s)
        tokens = self.speculate_each(model, new_cache, prompts, max_new_tokens, sampling, emit, stats)
        return Generation(tokens, stats.row())

    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        """One request after another (the default), with the figures counted over all of them, not the last."""
        stats = SpeculationStats(plain_step_s=self.plain_step_s)

        def generate(prompts: list[list[int]], max_new_tokens: int, emit_one: Emit) -> Generation:
            tokens = self.speculate_each(model, new_cache, prompts, max_new_tokens, sampling, emit_one, stats)
            return Generation(tokens, stats.row())

        return serve_one_by_one(generate, requests, emit, clock)
