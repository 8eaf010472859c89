"""`kvbench train-heads`: train Medusa, EAGLE or multi-token-prediction heads for a model, here, by
self-distillation, and save them under ``$KVBENCH_CACHE`` where the ``medusa``/``eagle``/``mtp`` decoders find them.

The data recipe (``store.RECIPE``): prose from the end of the offline stdlib text (away from the prompts' and
the quality text's regions), teacher-forced, plus the target's own greedy answers to a few hundred chat-style
requests built from our own templates and topics (strategies/training/requests.py; not the benchmark's prompts).
The target's hidden states over all of it are cached once per model, then each kind trains on them with AdamW and
reports loss and held-out top-1 agreement per head.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import torch

PROSE_OFFSET = 36_000  # the prompts read prose from 0..20k, the quality text from 20k on: train on the far end
GENERATE_BATCH = 16  # answers generated per left-padded batch: ~10x the throughput of one at a time on 2 cores


@dataclass(frozen=True)
class Recipe:
    prose_tokens: int = 3328
    heldout_prose: int = 256
    # Self-generated answers (the last sixth is held out). The answers are most of the data, and what the heads
    # must predict at serving time; 8 answers of 64 tokens left held-out agreement at 0.25-0.36.
    requests: int = 240
    new_tokens: int = 128

    def tag(self) -> str:
        return f"p{self.prose_tokens}-h{self.heldout_prose}-r{self.requests}x{self.new_tokens}"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-heads", help="train medusa / eagle / mtp draft heads for a model (self-distilled)",
                              description="Train speculation heads on the model's own hidden states and predictions "
                                          "and save them under KVBENCH_CACHE for the medusa, eagle and mtp decoders.")
    p.add_argument("--model", default="smollm2-135m", help="model whose heads to train (default smollm2-135m)")
    p.add_argument("--kind", required=True, help="medusa, eagle or mtp")
    p.add_argument("--steps", type=int, default=None, help="AdamW steps (default 1000)")
    p.add_argument("--heads", type=int, default=4, help="heads (eagle: the depth unrolled in training), default 4")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (the model the heads serve)")
    p.add_argument("--seed", type=int, default=0, help="seed for random:<shape> models and for training")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bench.models import ModelNotFound, load_model
    from strategies.training.heads import KINDS
    from strategies.training.store import DEFAULT_STEPS

    def fail(message: str) -> int:
        print(f"kvbench train-heads: {message}", file=sys.stderr)
        return 2

    steps = DEFAULT_STEPS if args.steps is None else args.steps
    if args.kind not in KINDS:
        return fail(f"unknown --kind {args.kind!r}; allowed: {', '.join(KINDS)}")
    if steps < 1 or not 1 <= args.heads <= 8:
        return fail(f"--steps must be >= 1 and --heads 1..8, got steps={steps} heads={args.heads}")
    try:
        loaded = load_model(args.model, args.dtype, "cpu", args.seed)
    except (ModelNotFound, ValueError) as e:
        return fail(str(e))
    path, report = train_and_save(loaded, args.kind, args.heads, steps, Recipe(), seed=args.seed)
    print(json.dumps({"heads": str(path), **report}, indent=1))
    return 0


def features_for(loaded, recipe: Recipe, log=print):
    """(train, held-out) features of the recipe's text for ``loaded``, computed once and cached on disk."""
    from bench.workloads.text import encode_prompt, prose_tokens
    from strategies.training import store
    from strategies.training.data import Features, collect
    from strategies.training.requests import training_requests

    model, tok = loaded.model, loaded.tokenizer
    path = store.cache_root() / "heads" / store.weights_hash(model) / f"features-{store.RECIPE}-{recipe.tag()}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        return Features(**blob["train"]), Features(**blob["heldout"])
    t0 = time.perf_counter()
    prose = prose_tokens(tok, PROSE_OFFSET, recipe.prose_tokens + recipe.heldout_prose)
    prompts = [encode_prompt(tok, text) for text in training_requests(recipe.requests)]
    answers = continuations(model, prompts, recipe.new_tokens)
    log(f"answers: {len(answers)} x {recipe.new_tokens} tokens in {time.perf_counter() - t0:.1f} s")
    held = max(1, recipe.requests // 6)
    train = collect(model, [prose[: recipe.prose_tokens]] + answers[:-held])
    heldout = collect(model, [prose[recipe.prose_tokens :]] + answers[-held:])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": train.to_dict(), "heldout": heldout.to_dict()}, path)
    log(f"features: {len(train)} train + {len(heldout)} held-out positions in {time.perf_counter() - t0:.1f} s")
    return train, heldout


def continuations(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Each prompt followed by the target's own greedy continuation of ``new_tokens`` (EOS banned, so every answer
    has the same length), generated in left-padded batches: padding may move a near-tie token, which changes what
    the heads see, not what they are scored on (the decoders' rows are checked against naive)."""
    from strategies.core.sampling import GREEDY
    from strategies.peers.hf_batch import hf_padded_batch

    out: list[list[int]] = []
    for start in range(0, len(prompts), GENERATE_BATCH):
        batch = prompts[start : start + GENERATE_BATCH]
        answers = hf_padded_batch(model, batch, [new_tokens] * len(batch), GREEDY, lambda b, tokens: None)
        out += [prompt + answer for prompt, answer in zip(batch, answers)]
    return out


def train_and_save(loaded, kind: str, num_heads: int, steps: int, recipe: Recipe, seed: int = 0, log=print):
    """Train ``kind`` heads for ``loaded`` and save them where the decoders look; (path, report dict)."""
    from strategies.training import store
    from strategies.training.train import train

    train_set, heldout = features_for(loaded, recipe, log)
    heads, report = train(loaded.model, kind, num_heads, train_set, heldout, steps, seed=seed,
                          log=lambda step, loss: log(f"step {step}: loss {loss:.3f}"))
    path = store.heads_path(loaded.model, kind, num_heads, steps)
    store.save(heads, report.to_dict(), path)
    return path, report.to_dict()
