"""`lookahead`: lookahead decoding (Fu et al. 2024, "Break the Sequential Dependency of LLM Inference Using
Lookahead Decoding"): every step is ONE target forward that runs the lookahead branch (a W x (N-1) Jacobi window
that grows n-grams) and the verification branch (up to G pooled n-grams starting with the last token) side by side
under one attention mask (see lookahead_window.py for the layout).

Acceptance walks the verification trie with tree.py's rule: greedy keeps the longest candidate prefix equal to the
target's argmax, plus the target's own next token (token-exact vs naive); under sampling the SpecInfer rule for
deterministic candidates keeps the target's distribution (the candidates never depend on this step's draws), as
the paper's sampling verification does. The cache keeps only the accepted entries: tree.keep_path crops the rest,
compacting a path that leaves the first candidate on ``full`` and re-feeding it on other caches. Over ``naive``
(no cache) the forward recomputes the prefix under the same mask.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field

import torch
from transformers import Cache, PreTrainedModel

from strategies.core.base import CacheStrategy, DecodingStrategy, Emit, Generation, NewCache
from strategies.core.forward import prefill
from strategies.core.hf_compat import with_cache
from strategies.core.requests import Request, ServeClock, serve_one_by_one
from strategies.core.sampling import Sampling, eos_ids
from strategies.decoding.lookahead_window import JacobiWindow, NgramPool, StepTree, add_trie
from strategies.decoding.speculation import SpeculationStats, plain_step_seconds
from strategies.decoding.tree import accept_tree, keep_path, tree_mask


@dataclass(frozen=True)
class LookaheadConfig:
    window: int
    ngram: int
    guess: int
    prompt_pool: bool

    @property
    def max_nodes(self) -> int:
        """Most tokens one step feeds after the input: the warm-up window (its largest level layout) and G
        candidates of N-1 tokens, plus tokens re-fed after a side-branch hit."""
        return (self.ngram - 1) * (self.window + self.ngram - 2) + (self.guess + 1) * (self.ngram - 1)


def step_mask(tree: StepTree, past: int, chain: int, dtype: torch.dtype, device: torch.device,
              with_prefix: bool) -> torch.Tensor:
    """tree.tree_mask for the chain + tree; ``with_prefix`` (no cache): causal rows for the prefix on top."""
    mask = tree_mask(tree, past, chain, dtype, device)  # type: ignore[arg-type]  # a tree of parents, like TreeShape
    if not with_prefix:
        return mask
    total = past + chain + len(tree)
    top = torch.full((past, total), torch.finfo(dtype).min, dtype=dtype, device=device).triu_(1)
    return torch.cat([top[None, None], mask], dim=2)


def step_inputs(model: PreTrainedModel, cache: Cache | None, seq: torch.Tensor, past: int, chain: list[int],
                tree: StepTree) -> dict[str, torch.Tensor]:
    """Ids, positions and mask of one forward of chain + tree after ``past`` cached tokens (the chain consecutive
    up to P, node j at P + depth); without a cache the prefix is recomputed in front of them."""
    device = model.device
    length = past + len(chain)  # P + 1
    ids = torch.tensor([chain + tree.tokens], device=device)
    pos = torch.tensor([list(range(past, length)) + [length - 1 + d for d in tree.depths]], device=device)
    if cache is None:
        ids, pos = torch.cat([seq[:, :past], ids], 1), torch.cat([torch.arange(past, device=device)[None], pos], 1)
    mask = step_mask(tree, past, len(chain), model.dtype, device, with_prefix=cache is None)
    return {"input_ids": ids, "position_ids": pos, "attention_mask": mask}


def step_forward(model: PreTrainedModel, cache: Cache | None, inputs: dict[str, torch.Tensor], fed: int,
                 rows: list[int]) -> torch.Tensor:
    """fp32 logits [len(rows), vocab] of ``rows`` (indices into the ``fed`` chain + tree tokens) only: the LM head
    costs as much as several layers, and the window's lower levels need none."""
    base = model.base_model
    out = base(**inputs, use_cache=cache is not None, **with_cache(base, cache))
    hidden = out.last_hidden_state[0]
    start = hidden.shape[0] - fed  # 0 with a cache; past the recomputed prefix without one
    return model.get_output_embeddings()(hidden[[start + r for r in rows]]).float()


@dataclass
class StepCounts:
    """Figures a lookahead row adds to the speculation breakdown."""

    steps: int = 0
    fed: int = 0  # tokens fed after the input, both branches
    verify_nodes: int = 0
    with_candidates: int = 0  # steps whose pool had n-grams for the input token
    pool_ngrams: int = 0  # at the end of the last request

    def row(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        return {"fed_tokens_per_step": self.fed / steps, "verify_tokens_per_step": self.verify_nodes / steps,
                "pool_hit_rate": self.with_candidates / steps, "pool_ngrams": self.pool_ngrams}


@torch.inference_mode()
def lookahead_generate(model: PreTrainedModel, cache: Cache | None, prompt: list[int], max_new_tokens: int,
                       sampling: Sampling, config: LookaheadConfig, emit, stats: SpeculationStats,
                       counts: StepCounts) -> list[int]:
    """Exactly ``max_new_tokens`` after ``prompt``; ``emit(tokens)`` after the prefill and every step."""
    device, banned = model.device, eos_ids(model)
    gen = sampling.generator(device)
    n, end = len(prompt), len(prompt) + max_new_tokens
    seq = torch.empty(1, end, dtype=torch.long, device=device)
    seq[0, :n] = torch.tensor(prompt, device=device)
    first = int(sampling.select(prefill(model, cache, seq[:, :n]), seq[:, :n], gen, banned))
    seq[0, n], length, chain = first, n + 1, [first]
    stats.target_forwards, stats.emitted = stats.target_forwards + 1, stats.emitted + 1
    emit([first])
    window = JacobiWindow(config.window, config.ngram, prompt, random.Random(sampling.seed))
    pool = NgramPool(config.guess)
    if config.prompt_pool:
        pool.add_text(prompt + [first], config.ngram)
    while length < end:
        t0 = time.perf_counter()
        tree = StepTree()
        depth = min(config.ngram - 1, end - length - 1)  # the target adds one token: never verify past the end
        if depth > 0:
            add_trie(tree, pool.candidates(chain[-1]), depth)
        window.add_to(tree)
        past, c = length - len(chain), len(chain)
        rows = [c - 1] + [c + j for j in range(tree.num_verify)] + [c + j for j in tree.outputs]
        inputs = step_inputs(model, cache, seq, past, chain, tree)
        t1 = time.perf_counter()
        logits = step_forward(model, cache, inputs, c + len(tree), rows)
        dist_at = functools.partial(_distribution, sampling, logits, seq[0, :length], banned)
        path, token = accept_tree(tree, tree.tokens, dist_at, gen)  # type: ignore[arg-type]
        t2 = time.perf_counter()
        pending = keep_path(cache, tree, path, tree.tokens, past, c) if cache is not None else []  # type: ignore
        new = [tree.tokens[j] for j in path] + [token]
        seq[0, length : length + len(new)] = torch.tensor(new, device=device)
        length += len(new)
        guesses = logits[1 + tree.num_verify :].argmax(-1).tolist()  # the window's guesses are greedy, as the paper's
        for key, gram in window.advance(guesses, chain[-1], banned):
            pool.add(key, gram)
        if config.prompt_pool:  # the n-grams the accepted tokens complete
            done = seq[0, max(0, length - len(new) - config.ngram + 1) : length].tolist()
            pool.add_text(done, config.ngram)
        chain = pending + [token]
        counts.steps, counts.fed, counts.verify_nodes = counts.steps + 1, counts.fed + len(tree), \
            counts.verify_nodes + tree.num_verify
        counts.with_candidates += tree.num_verify > 0
        stats.record(tree.verify_depth, tree.num_verify, len(path), t1 - t0, t2 - t1, time.perf_counter() - t0)
        emit(new)
    counts.pool_ngrams = len(pool)
    return seq[0, n:].tolist()


def _distribution(sampling: Sampling, logits: torch.Tensor, done: torch.Tensor, banned: list[int], node: int,
                  path_tokens: list[int]) -> torch.Tensor:
    """The target's distribution after trie node ``node`` (-1: the input token); logits row 0 is the input's,
    row 1 + j node j's."""
    history = torch.cat([done, torch.tensor(path_tokens, dtype=torch.long, device=done.device)])
    return sampling.distribution(logits[node + 1], history[None], banned)


@dataclass
class Lookahead(DecodingStrategy):
    name = "lookahead"
    summary = "Jacobi lookahead window + n-gram verification in one masked forward (Fu et al. 2024)"
    lossless = True

    # Defaults measured on 2 CPU cores (docs/MEASUREMENTS.md, #15): every fed token costs real compute there, so
    # a small window beats the paper's GPU settings (W=5..7, N=4..5, G=W) on both chat-short and copy-edit.
    window: int = field(default=3, metadata={"help": "W: lookahead window columns (future positions guessed), >= 1"})
    ngram: int = field(default=3, metadata={
        "help": "N: n-gram size; the window keeps N-1 Jacobi levels and candidates verify N-1 tokens, >= 3"})
    guess: int = field(default=3, metadata={
        "help": "G: n-grams kept per first token and verified per step (the paper's G = W), >= 1"})
    prompt_pool: bool = field(default=True, metadata={
        "help": "also pool the prompt's and the output's own n-grams (the implementation's POOL_FROM_PROMPT)"})

    plain_step_s = 0.0  # set by prepare (not a parameter): see SpeculationStats

    def validate(self) -> None:
        for key, low in (("window", 1), ("ngram", 3), ("guess", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"{key} must be >= {low}, got {getattr(self, key)}")

    @property
    def config(self) -> LookaheadConfig:
        return LookaheadConfig(self.window, self.ngram, self.guess, self.prompt_pool)

    def prepare(self, model: PreTrainedModel, load=None) -> None:
        self.plain_step_s = plain_step_seconds(model)

    def generate_each(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]],
                      max_new_tokens: int, sampling: Sampling, emit: Emit, stats: SpeculationStats,
                      counts: StepCounts) -> list[list[int]]:
        config, outputs = self.config, []
        for i, prompt in enumerate(prompts):
            cache = new_cache(1, len(prompt) + max_new_tokens + config.max_nodes)
            outputs.append(lookahead_generate(model, cache, prompt, max_new_tokens, sampling, config,
                                              lambda tokens, i=i: emit(i, tokens), stats, counts))
        stats.extra.update(counts.row())
        return outputs

    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        stats = SpeculationStats(plain_step_s=self.plain_step_s)
        tokens = self.generate_each(model, new_cache, prompts, max_new_tokens, sampling, emit, stats, StepCounts())
        return Generation(tokens, stats.row())

    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        stats, counts = SpeculationStats(plain_step_s=self.plain_step_s), StepCounts()

        def generate(prompts: list[list[int]], max_new_tokens: int, emit_one: Emit) -> Generation:
            tokens = self.generate_each(model, new_cache, prompts, max_new_tokens, sampling, emit_one, stats, counts)
            return Generation(tokens, stats.row())

        return serve_one_by_one(generate, requests, emit, clock)
