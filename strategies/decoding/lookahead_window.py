"""The state of `lookahead` decoding (Fu et al. 2024) and the tree of tokens one step feeds the target.

**Lookahead branch.** A 2-D window of ``window`` (W) columns and ``ngram - 1`` (N-1) Jacobi levels, laid out as in
the authors' implementation (hao-ai-lab/LookaheadDecoding): with P the position of the last accepted token (the
step's input), level 0 holds W-1 tokens at P+1..P+W-1 (column 0 is the input token itself) and level l >= 1 holds
W tokens, column c at position P+c+l. The token at (l, c) attends to the prefix, to level 0's columns 0..c and to
levels 1..l of its own column: a consecutive context P..P+c+l, i.e. a Jacobi trajectory. Each step the last
level's outputs (the target's greedy guess for position P+c+N-1) become a new level and the oldest one is dropped,
so column c then reads (level 0, .., level N-2, output) = an N-gram over consecutive positions, harvested into the
pool keyed by its first token. The window is filled in N-2 warm-up steps from W+N-3 tokens of the prompt. As in
the paper the window always advances one position per step, however many tokens were accepted.

**Verification branch.** Up to ``guess`` (G) pooled n-grams whose first token is the input token; their N-1
remaining tokens are merged into a trie (shared prefixes once), each node attending to the prefix, the input and
its own ancestors, at position P + depth.

Both branches form one tree of parents (a lookahead token's "parent" is the token before it in its trajectory), so
one additive mask (tree.tree_mask) says who sees whom: branches never see each other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class StepTree:
    """The tokens one step feeds after the input: the verification trie (nodes 0..num_verify-1, the first
    candidate's chain first, so accepting along it is a prefix of the layout) then the lookahead window.
    ``parents[j]``: node index of the token before node j (-1: the input token); ``depths[j]``: its position past
    the input's; ``children``: the verification trie only (what acceptance may walk); ``outputs``: the nodes whose
    predictions form the window's next level."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    num_verify: int = 0
    outputs: list[int] = field(default_factory=list)
    children: dict[int, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int, depth: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(depth)
        return len(self.tokens) - 1

    @property
    def verify_depth(self) -> int:
        return max(self.depths[: self.num_verify], default=0)


def add_trie(tree: StepTree, candidates: list[tuple[int, ...]], depth: int) -> None:
    """The candidates' first ``depth`` tokens as a trie under the input token (in the order given)."""
    index: dict[tuple[int, int], int] = {}
    for gram in candidates:
        parent = -1
        for d, token in enumerate(gram[:depth], start=1):
            if (parent, token) not in index:
                index[(parent, token)] = tree.add(token, parent, d)
                tree.children.setdefault(parent, []).append(index[(parent, token)])
            parent = index[(parent, token)]
    tree.num_verify = len(tree.tokens)


class JacobiWindow:
    """``levels[0]``: W-1 tokens (W+N-3 before warm-up); ``levels[l >= 1]``: one more than level 0."""

    def __init__(self, window: int, ngram: int, seed_tokens: list[int], rng: random.Random):
        self.window, self.ngram = window, ngram
        self.seed_tokens, self.rng = seed_tokens, rng
        self.levels: list[list[int]] = [[self._fill() for _ in range(window + ngram - 3)]]

    def _fill(self) -> int:
        return self.rng.choice(self.seed_tokens)

    @property
    def is_full(self) -> bool:
        return len(self.levels) == self.ngram - 1

    def add_to(self, tree: StepTree) -> None:
        """Append the window's tokens to ``tree``; its last level's nodes are the tree's ``outputs``."""
        first: list[int] = []
        for i, token in enumerate(self.levels[0]):  # column i+1 of the first level: after column i
            first.append(tree.add(token, first[-1] if first else -1, i + 1))
        above = [-1] + first  # the node before (level 1, column c): column c of level 0 (0: the input)
        for level, tokens in enumerate(self.levels[1:], start=1):
            above = [tree.add(token, above[c], c + level) for c, token in enumerate(tokens)]
        tree.outputs = above if len(self.levels) > 1 else first

    def advance(self, guesses: list[int], root: int, banned: list[int]) -> list[tuple[int, tuple[int, ...]]]:
        """Take the last level's guesses as the new level, drop the oldest; return the completed n-grams
        (first token, the N-1 after it) once the window is full. ``root``: the input token (column 0)."""
        guesses = [self._fill() if g in banned else g for g in guesses]  # banned ids (EOS) never enter the window
        if not self.is_full:  # warm-up: every level loses its first column, the new one its first guess too
            new = guesses if len(self.levels) == 1 else guesses[1:]
            self.levels = [tokens[1:] for tokens in self.levels] + [new]
            return []
        heads = [root] + self.levels[0]
        grams = [(heads[c], tuple(tokens[c] for tokens in self.levels[1:]) + (guesses[c],))
                 for c in range(self.window)]
        self.levels = [self.levels[1][1:]] + self.levels[2:] + [guesses]
        return grams


class NgramPool:
    """At most ``size`` n-grams per first token, least recently added or seen dropped first (LRU, as the paper's
    implementation keeps its guess set)."""

    def __init__(self, size: int):
        self.size = size
        self.grams: dict[int, list[tuple[int, ...]]] = {}

    def add(self, first: int, gram: tuple[int, ...]) -> None:
        kept = self.grams.setdefault(first, [])
        if gram in kept:
            kept.remove(gram)
        elif len(kept) >= self.size:
            kept.pop(0)
        kept.append(gram)

    def add_text(self, tokens: list[int], n: int) -> None:
        """Every n-gram of ``tokens``."""
        for i in range(len(tokens) - n + 1):
            self.add(tokens[i], tuple(tokens[i + 1 : i + n]))

    def candidates(self, first: int) -> list[tuple[int, ...]]:
        """The n-grams (without their first token) starting with ``first``, newest first."""
        return self.grams.get(first, [])[::-1]

    def __len__(self) -> int:
        return sum(len(v) for v in self.grams.values())
