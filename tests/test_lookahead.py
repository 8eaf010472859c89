"""Lookahead decoding (Fu et al. 2024): the window's layout and mask on a hand-checked case, its Jacobi update and
n-gram harvest, the pool, acceptance through a side candidate (compacted on full, re-fed on other caches), token
exactness vs naive greedy, harvested n-grams that really get accepted, and sampling that keeps the target's
distribution."""

from __future__ import annotations

import random

import pytest
import torch
from scipy.stats import chisquare

from strategies.core.sampling import GREEDY, Sampling
from strategies.decoding import lookahead_window
from strategies.decoding.lookahead import Lookahead, step_mask
from strategies.decoding.lookahead_window import JacobiWindow, NgramPool, StepTree, add_trie
from strategies.decoding.tree import accept_tree
from tests.helpers import generate, prepared

MAX_NEW = 16


def window_of(levels: list[list[int]], ngram: int) -> JacobiWindow:
    window = JacobiWindow(len(levels[-1]), ngram, [0], random.Random(0))
    window.levels = [list(lv) for lv in levels]
    return window


def test_step_tree_layout_and_mask_on_a_hand_checked_case():
    """W=3, N=4 (full window) and two candidates sharing their first token. Tokens name what they are."""
    tree = StepTree()
    add_trie(tree, [(10, 11, 12), (10, 21, 22)], depth=3)
    window_of([[31, 32], [40, 41, 42], [50, 51, 52]], ngram=4).add_to(tree)
    assert tree.tokens == [10, 11, 12, 21, 22, 31, 32, 40, 41, 42, 50, 51, 52]
    assert tree.parents == [-1, 0, 1, 0, 3, -1, 5, -1, 5, 6, 7, 8, 9]
    assert tree.depths == [1, 2, 3, 2, 3, 1, 2, 1, 2, 3, 2, 3, 4]  # position past the input: column + level
    assert tree.num_verify == 5 and tree.outputs == [10, 11, 12]
    assert tree.children == {-1: [0], 0: [1, 3], 1: [2], 3: [4]}  # acceptance walks the trie only
    allowed = step_mask(tree, past=2, chain=1, dtype=torch.float32, device="cpu", with_prefix=False)[0, 0] == 0
    seen = {j: [k - 3 for k in range(3, 16) if allowed[1 + j, k]] for j in range(13)}
    for j in range(13):
        assert allowed[1 + j, :3].all()  # the prefix and the input token
    assert seen[4] == [0, 3, 4]  # a candidate's token: its own earlier tokens only
    assert seen[11] == [5, 8, 11]  # (level 2, column 1): level 0 columns 0..1, then its own column
    assert seen[12] == [5, 6, 9, 12]  # (level 2, column 2)
    assert seen[10] == [7, 10]  # (level 2, column 0): column 0 of level 0 is the input itself
    assert allowed[0].tolist() == [True] * 3 + [False] * 13  # the input: causal
    naive = step_mask(tree, past=2, chain=1, dtype=torch.float32, device="cpu", with_prefix=True)[0, 0] == 0
    assert naive.shape == (16, 16) and naive[:2].tolist() == [[True] + [False] * 15, [True, True] + [False] * 14]


def test_window_warms_up_then_harvests_column_ngrams():
    window = JacobiWindow(3, 4, [7], random.Random(0))
    assert [len(lv) for lv in window.levels] == [4] and not window.is_full  # W + N - 3 tokens from the prompt
    assert window.advance([1, 2, 3, 4], root=9, banned=[]) == [] and [len(lv) for lv in window.levels] == [3, 4]
    assert window.advance([1, 2, 3, 4], root=9, banned=[]) == [] and [len(lv) for lv in window.levels] == [2, 3, 3]
    assert window.is_full
    window = window_of([[31, 32], [40, 41, 42], [50, 51, 52]], ngram=4)
    grams = window.advance([60, 2, 62], root=9, banned=[2])  # a banned guess (EOS) is replaced from the prompt
    assert grams == [(9, (40, 50, 60)), (31, (41, 51, 0)), (32, (42, 52, 62))]
    assert window.levels == [[41, 42], [50, 51, 52], [60, 0, 62]]


def test_pool_keeps_the_newest_g_ngrams_per_first_token():
    pool = NgramPool(2)
    for gram in [(2, 3), (4, 5), (2, 3), (6, 7)]:
        pool.add(1, gram)
    assert pool.candidates(1) == [(6, 7), (2, 3)] and pool.candidates(8) == [] and len(pool) == 2
    pool.add_text([1, 2, 3, 1, 2, 4], 3)
    assert pool.candidates(1) == [(2, 4), (2, 3)] and pool.candidates(3) == [(1, 2)]


def test_trie_acceptance_under_sampling_follows_the_target():
    """Two candidates share their first token, a third differs: the first two emitted tokens are distributed as
    the target's (SpecInfer's rule along the trie)."""
    tree = StepTree()
    add_trie(tree, [(0, 1), (0, 2), (3, 1)], depth=2)
    p0, p1 = torch.tensor([0.3, 0.1, 0.2, 0.15, 0.25]), torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1])

    def dist(node, _):
        return p0 if node < 0 else p1 if tree.tokens[node] == 0 else torch.ones(5) / 5

    gen, trials = torch.Generator().manual_seed(0), 3000
    first, second = torch.zeros(5), torch.zeros(5)
    for _ in range(trials):
        path, token = accept_tree(tree, tree.tokens, dist, gen)
        emitted = [tree.tokens[j] for j in path] + [token]
        first[emitted[0]] += 1
        if emitted[0] == 0:
            second[emitted[1]] += 1
    assert chisquare(first, p0 * trials).pvalue > 1e-3
    assert chisquare(second, p1 * second.sum()).pvalue > 1e-3


def test_parameters_are_validated_in_one_line():
    with pytest.raises(ValueError, match=r"^ngram must be >= 3, got 2$"):
        Lookahead(ngram=2)
    with pytest.raises(ValueError, match=r"^window must be >= 1, got 0$"):
        Lookahead(window=0)


@pytest.mark.parametrize("spec,params", [
    ("lookahead", {}),  # compacted in place
    ("lookahead+paged", {"paged": {"block_size": 4}}),  # re-fed at the head of the next forward
    ("lookahead+quant-int8", {"quant-int8": {"group_size": 8, "residual": 64}}),  # rollbacks stay full precision
    ("lookahead+naive", {}),  # the prefix recomputed under the same mask
])
def test_a_side_candidate_is_accepted_and_kept_exactly(tiny, monkeypatch, spec, params):
    """The pool offers a wrong n-gram first and the target's own continuation second: every step accepts the
    second (a path off the first candidate), and the output stays the reference's."""
    prompt = [5, 9, 14, 3, 22, 7, 30, 11]
    reference = generate(tiny.model, "naive", [prompt], MAX_NEW)[0]
    produced: list[int] = []

    def candidates(self, first):
        at = len(produced)  # the input token is reference[at - 1]
        right = tuple(reference[at : at + 3]) + (0,) * 3
        return [tuple(t + 1 for t in right[:3]), right[:3]]

    monkeypatch.setattr(lookahead_window.NgramPool, "candidates", candidates)
    comp = prepared(tiny.model, spec, {"lookahead": {"window": 3, "ngram": 4, "guess": 2}, **params})
    out = comp.decoder.generate(tiny.model, comp.cache_factory(tiny.model), [prompt], MAX_NEW, GREEDY,
                                lambda i, t: produced.extend(t))
    assert out.tokens[0] == reference == produced
    assert out.stats["mean_accepted_len"] > 3  # three accepted + the target's own, but for the capped last steps
    assert out.stats["acceptance_by_pos"].startswith("1.00 1.00 1.00")


def test_harvested_ngrams_are_accepted_on_a_repetitive_prompt_and_output_is_exact(smol):
    """The real model on a counting prompt: n-grams grown by the window (no prompt pool) get accepted, so a step
    keeps more than one token on average, and the tokens are naive's."""
    prompt = smol.tokenizer("one two three four five six seven eight nine ten one two three four five six seven "
                            "eight nine ten one two three four five").input_ids
    reference = generate(smol.model, "naive", [prompt], 24)
    comp = prepared(smol.model, "lookahead", {"lookahead": {"window": 5, "ngram": 4, "guess": 5}})
    out = comp.decoder.generate(smol.model, comp.cache_factory(smol.model), [prompt], 24, GREEDY, lambda i, t: None)
    assert out.tokens == reference
    stats = out.stats
    assert stats["mean_accepted_len"] > 1.5, stats
    assert stats["pool_ngrams"] > 0 and stats["fed_tokens_per_step"] > 10
    for key in ("accepted_len_hist", "acceptance_by_pos", "draft_ms_per_step", "verify_ms_per_step",
                "overhead_ms_per_step", "plain_step_ms", "speedup_predicted"):
        assert key in stats
    assert stats["plain_step_ms"] > 0 and stats["speedup_predicted"] > 0


def test_sampled_lookahead_is_seeded_and_full_length(tiny):
    s = Sampling(temperature=0.8, top_p=0.9, seed=3)
    params = {"lookahead": {"window": 3, "ngram": 3, "guess": 3, "prompt_pool": True}}
    prompts = [list(range(200, 211)) * 2]
    a = generate(tiny.model, "lookahead", prompts, 12, params, sampling=s)
    assert len(a[0]) == 12 and a == generate(tiny.model, "lookahead", prompts, 12, params, sampling=s)
