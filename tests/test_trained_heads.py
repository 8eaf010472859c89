"""Trained speculation (medusa, eagle, mtp): the tree's mask and acceptance rule (greedy exact, sampling keeps
the target's distribution), the accepted path kept in every rollback-able cache (compacted or re-fed), token
exactness vs naive greedy, `kvbench train-heads` on a tiny model, and the failure that names the training command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from bench.commands import train_heads
from strategies.core.base import StrategyFailed
from strategies.core.sampling import GREEDY
from strategies.decoding.speculation import SpeculationStats
from strategies.decoding.tree import TreeShape, accept_tree, tree_generate, tree_mask
from strategies.registry import REGISTRY, compose
from strategies.training import store
from strategies.training.heads import build_heads
from tests.helpers import generate

MAX_NEW = 16


@pytest.fixture
def heads_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(store, "cache_root", lambda: tmp_path)
    return tmp_path


def test_tree_mask_lets_a_node_see_the_past_the_chain_and_its_ancestors_only():
    shape = TreeShape((2, 2))  # nodes: spine d1, spine d2, side d1, side d2 (child of spine d1)
    assert shape.nodes == [(1, 0), (2, 0), (1, 1), (2, 1)] and shape.parents == [-1, 0, -1, 0]
    allowed = tree_mask(shape, past=3, chain=2, dtype=torch.float32, device="cpu")[0, 0] == 0
    assert allowed[0].tolist() == [True] * 4 + [False] * 5  # chain: causal
    assert allowed[2].tolist() == [True] * 5 + [True, False, False, False]  # spine d1: itself
    assert allowed[3].tolist() == [True] * 5 + [True, True, False, False]  # spine d2: spine d1 and itself
    assert allowed[5].tolist() == [True] * 5 + [True, False, False, True]  # side d2: spine d1 and itself


def test_greedy_acceptance_walks_the_matching_path_through_side_branches():
    shape = TreeShape((2, 2, 1))  # spine 0,1,2; sides 3 (d1), 4 (d2)
    tokens = [10, 11, 12, 20, 21]
    argmax = {-1: 10, 0: 21, 4: 7}  # root -> 10 (spine d1); then 21 (side d2); the side node has no children

    def dist(node, path_tokens):
        return torch.eye(32)[argmax[node]]

    assert accept_tree(shape, tokens, dist, None) == ([0, 4], 7)


def test_tree_rejection_sampling_follows_the_target():
    """Deterministic candidates (the drafter's top 3): the token emitted first is distributed as the target's."""
    target = torch.tensor([0.05, 0.30, 0.10, 0.25, 0.20, 0.10])
    shape, tokens = TreeShape((3,)), [0, 2, 5]  # candidates the target finds unlikely, tried first
    gen = torch.Generator().manual_seed(0)
    trials, counts = 2000, torch.zeros(6)
    for _ in range(trials):
        path, token = accept_tree(shape, tokens, lambda node, _: target if node < 0 else torch.ones(6) / 6, gen)
        counts[tokens[path[0]] if path else token] += 1
    assert chisquare(counts, target * trials).pvalue > 1e-3


@pytest.mark.parametrize("cache", ["full", "quant-int8"])  # compacted in place / re-fed
def test_tree_decoding_with_side_branch_hits_is_token_exact(tiny, cache):
    model = tiny.model
    prompt = tiny.tokenizer("The tree of candidates is verified in one forward").input_ids
    reference = generate(model, "naive", [prompt], MAX_NEW)[0]
    state = {"step": 0}
    produced: list[int] = []

    def draft(feature, root, shape):
        state["step"] += 1
        at = len(produced)  # the root is reference[at - 1]; depth d should be reference[at - 1 + d]
        right = [reference[at - 1 + d] if at - 1 + d < len(reference) else 0 for d in range(1, len(shape.widths) + 1)]
        ranked = [[r, r + 1, r + 2][: w] for r, w in zip(right, shape.widths)]
        if state["step"] % 3 == 0 and len(ranked) >= 2:  # the right depth-2 token as the side branch
            ranked[1] = [right[1] + 1, right[1]][: shape.widths[1]]
        return shape.tokens(ranked)

    stats = SpeculationStats()
    comp = compose(cache, {})
    new_cache = comp.cache_factory(model)
    out = tree_generate(model, new_cache(1, len(prompt) + MAX_NEW + 8), prompt, MAX_NEW, GREEDY,
                        TreeShape((2, 2, 1)), draft, produced.extend, stats)
    assert out == reference == produced
    assert stats.row()["mean_accepted_len"] > 1.5 and stats.steps < MAX_NEW


def train_args(kind: str, steps: int = 2, heads: int = 2, model: str = "random:tiny-llama") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_heads.add_parser(parser.add_subparsers())
    return parser.parse_args(["train-heads", "--model", model, "--kind", kind, "--steps", str(steps),
                              "--heads", str(heads)])


def test_train_heads_saves_heads_the_decoders_load_and_stay_exact(tiny, heads_dir, monkeypatch, capsys):
    small = train_heads.Recipe(128, 32, 2, 8)
    monkeypatch.setattr(train_heads, "Recipe", lambda: small)
    assert train_heads.run(train_args("medusa")) == 0  # the command once; the features it cached serve the rest
    report = capsys.readouterr().out
    assert '"agreement"' in report and '"heads_bytes"' in report
    for kind in ("eagle", "mtp"):
        train_heads.train_and_save(tiny, kind, 2, 2, small, log=lambda *a: None)
    reference = generate(tiny.model, "naive", [[1, 2, 3, 4]], MAX_NEW)
    for name, params in (("medusa", {"heads": 2, "tree": "3,2"}), ("eagle", {"heads": 2, "depth": 3}),
                         ("mtp", {"heads": 2})):
        for cache in ("full", "quant-int8"):
            tokens = generate(tiny.model, f"{name}+{cache}", [[1, 2, 3, 4]], MAX_NEW, {name: {**params, "steps": 2}})
            assert tokens == reference, (name, cache)


def test_missing_heads_fail_with_the_command_that_trains_them(tiny, heads_dir):
    decoder = REGISTRY["medusa"](heads=3, steps=7)
    with pytest.raises(StrategyFailed, match=r"kvbench train-heads --model .* --kind medusa --heads 3 --steps 7"):
        decoder.prepare(tiny.model)


def test_train_heads_rejects_an_unknown_kind_in_one_line(capsys):
    assert train_heads.run(train_args("hydra")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kvbench train-heads: unknown --kind 'hydra'; allowed: medusa, eagle, mtp"


def test_medusa_on_the_real_model_is_token_exact_over_full_and_paged(smol, smol_prompts, heads_dir):
    """Heads with a real draft vocabulary but untrained weights (exactness does not depend on their quality)."""
    model = smol.model
    heads = build_heads("medusa", model.config.hidden_size, 2, torch.arange(0, 4096))
    torch.nn.init.normal_(heads.blocks[0].weight, std=0.02)
    store.save(heads, {"heads_bytes": 1}, store.heads_path(model, "medusa", 2, 1))
    reference = generate(model, "naive", smol_prompts[:1], MAX_NEW)
    for spec in ("medusa", "medusa+paged"):
        assert generate(model, spec, smol_prompts[:1], MAX_NEW, {"medusa": {"heads": 2, "tree": "3,2",
                                                                            "steps": 1}}) == reference


def test_a_tree_on_the_command_line_is_one_row_written_with_slashes():
    from strategies.decoding.tree import parse_widths
    from strategies.registry import parse_params

    assert parse_params(["medusa.tree=2/1/1", "eagle.tree=3/2/1/1,1/1"]) == {
        "medusa": {"tree": ["2/1/1"]}, "eagle": {"tree": ["3/2/1/1", "1/1"]}}
    assert parse_widths("3/2/1/1") == parse_widths("3,2,1,1") == (3, 2, 1, 1)
    with pytest.raises(ValueError, match=r"tree must be whole numbers >= 1 separated by / .* got '2/0'"):
        parse_widths("2/0")
