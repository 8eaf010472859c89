"""Tree speculation, shared by ``medusa`` and ``eagle`` (and ``mtp``, whose tree is a chain): the tree's shape,
its attention mask, one verify forward, acceptance along the tree, and keeping only the accepted path in the cache.

The tree is a *spine with side branches*: ``widths = (w1, .., wD)`` puts the w_d best candidates for depth d
under the spine node of depth d-1 (the drafter's best guess), so the drafter runs along one path and a tree of
sum(w) nodes costs one verify forward. Nodes are laid out spine first: when the accepted path stays on the
spine (the common case) it is a prefix of the verified tokens, and dropping the rest is a plain ``crop`` on any
cache. A path that ends on a side node is compacted in place where the cache is a plain preallocated one
(``full``); on other caches (quantized, paged) the side node is cropped and re-fed at the head of the next verify
forward, which costs one more token in that forward instead of a copy the cache cannot do.

Acceptance (Medusa/SpecInfer's rule for deterministic candidates): at a node, its children are tried in rank
order; child c is kept with probability r(c), where r starts as the target's distribution and each rejected
child's mass is removed and r renormalised; if none is kept the next token is drawn from r. The emitted token is
distributed as the target's (under greedy r is one-hot: keep the child equal to the argmax, lossless).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import Cache, PreTrainedModel

from strategies.caches.full import PreallocatedLayer
from strategies.core.base import CacheStrategy, DecodingStrategy, Emit, Generation, NewCache
from strategies.core.requests import Request, ServeClock, serve_one_by_one
from strategies.core.sampling import Sampling, draw, eos_ids
from strategies.decoding.speculation import SpeculationStats, plain_step_seconds
from strategies.kernels.lean_verify import lean_hidden
from strategies.training import store
from strategies.training.data import hidden_and_logits
from strategies.training.heads import Heads
from strategies.training.store import DEFAULT_STEPS


def parse_widths(spec: str, name: str = "tree") -> tuple[int, ...]:
    """'4/3/2/2' or '4,3,2,2' -> (4, 3, 2, 2): candidates kept per depth. '/' because on the command line a comma
    in ``--param`` makes rows. ValueError names the allowed form."""
    parts = [p.strip() for p in str(spec).replace("/", ",").split(",")]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"{name} must be whole numbers >= 1 separated by / (candidates per depth, e.g. 4/3/2), "
                         f"got {spec!r}")
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class TreeShape:
    widths: tuple[int, ...]

    @functools.cached_property
    def nodes(self) -> list[tuple[int, int]]:
        """(depth, rank) of every node in layout order: the spine (rank 0) by depth, then the side nodes."""
        spine = [(d, 0) for d in range(1, len(self.widths) + 1)]
        return spine + [(d, r) for d, w in enumerate(self.widths, start=1) for r in range(1, w)]

    @functools.cached_property
    def parents(self) -> list[int]:
        """Node index of each node's parent (-1: the root, the last token already decided)."""
        return [d - 2 for d, _ in self.nodes]  # the spine node of depth d-1 sits at index d-2

    @functools.cached_property
    def children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {-1: []}
        for j, parent in enumerate(self.parents):
            kids.setdefault(parent, []).append(j)
        for parent in kids:  # rank order: the drafter's best candidate is tried first
            kids[parent].sort(key=lambda j: self.nodes[j][1])
        return kids

    def __len__(self) -> int:
        return len(self.nodes)

    def cut(self, depth: int) -> TreeShape:
        return TreeShape(self.widths[:depth])

    def tokens(self, candidates: list[list[int]]) -> list[int]:
        """Node tokens from ``candidates[d-1]``: the ranked candidates for depth d."""
        return [candidates[d - 1][r] for d, r in self.nodes]


def tree_mask(shape: TreeShape, past: int, chain: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [1, 1, chain + nodes, past + chain + nodes]: the chain (tokens decided, not yet cached) is
    causal; every node sees the past, the whole chain, its ancestors and itself."""
    n = len(shape)
    allowed = torch.zeros(chain + n, past + chain + n, dtype=torch.bool)
    allowed[:, :past] = True
    allowed[:chain, past : past + chain] = torch.ones(chain, chain, dtype=torch.bool).tril()
    allowed[chain:, past : past + chain] = True
    for j in range(n):
        a = j
        while a >= 0:
            allowed[chain + j, past + chain + a] = True
            a = shape.parents[a]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.to(device)[None, None]


def accept_tree(shape: TreeShape, tokens: list[int], dist_at: Callable[[int, list[int]], torch.Tensor],
                generator: torch.Generator | None) -> tuple[list[int], int]:
    """(accepted node indices along one path, the token after them). ``dist_at(node, path_tokens)``: the target's
    distribution after ``node`` (-1: the root)."""
    path: list[int] = []
    cur = -1
    while True:
        residual = dist_at(cur, [tokens[j] for j in path]).clone()
        chosen = None
        for j in shape.children.get(cur, []):
            t = tokens[j]
            if torch.rand((), generator=generator) < residual[t]:
                chosen = j
                break
            residual[t] = 0.0
            total = residual.sum()
            if total <= 0:
                break
            residual /= total
        if chosen is None:
            return path, int(draw(residual, generator))
        path.append(chosen)
        cur = chosen


def keep_path(cache: Cache, shape: TreeShape, path: list[int], tokens: list[int], past: int, chain: int) -> list[int]:
    """Leave ``cache`` holding the past, the chain and the accepted path; returns the path tokens it could not
    keep (to be re-fed at the head of the next verify forward)."""
    spine_len = next((i for i, j in enumerate(path) if j != i), len(path))  # accepted spine nodes: indices 0..
    if spine_len == len(path):
        if len(shape) > len(path):
            cache.crop(-(len(shape) - len(path)))
        return []
    layers = list(getattr(cache, "layers", []))
    if layers and all(type(la) is PreallocatedLayer for la in layers):
        src = torch.tensor([past + chain + j for j in path], device=layers[0].keys.device)
        dst = slice(past + chain, past + chain + len(path))
        for la in layers:  # in-place compaction: the gathered rows are copied before the writes
            la.keys[:, :, dst] = la.keys.index_select(2, src)
            la.values[:, :, dst] = la.values.index_select(2, src)
            la.length = past + chain + len(path)
        return []
    cache.crop(-(len(shape) - spine_len))
    return [tokens[j] for j in path[spine_len:]]


Drafter = Callable[[torch.Tensor, int, TreeShape], list[int]]  # (feature, root token, shape) -> node tokens


@torch.inference_mode()
def tree_generate(model: PreTrainedModel, cache: Cache, prompt: list[int], max_new_tokens: int, sampling: Sampling,
                  shape: TreeShape, drafter: Drafter, emit: Callable[[list[int]], None],
                  stats: SpeculationStats) -> list[int]:
    """Exactly ``max_new_tokens`` after ``prompt``: each step drafts a tree from the feature that predicted the
    last token, verifies it in one forward and keeps the accepted path plus one token of the target's own."""
    device, banned = model.device, eos_ids(model)
    gen = sampling.generator(device)
    n, end = len(prompt), len(prompt) + max_new_tokens
    seq = torch.empty(1, end, dtype=torch.long, device=device)
    seq[0, :n] = torch.tensor(prompt, device=device)
    hidden, logits = hidden_and_logits(model, seq[:, :n], cache, last_only=True,
                                       position_ids=torch.arange(n, device=device)[None])
    first = int(sampling.select(logits, seq[:, :n], gen, banned))
    seq[0, n], length, feature, chain = first, n + 1, hidden, [first]
    stats.target_forwards, stats.emitted = stats.target_forwards + 1, stats.emitted + 1
    emit([first])
    while length < end:
        t0 = time.perf_counter()
        step_shape = shape.cut(end - length - 1)  # the target adds one token: never draft past the end
        tokens = drafter(feature, chain[-1], step_shape) if len(step_shape) else []
        t1 = time.perf_counter()
        past = length - len(chain)  # tokens in the cache
        ids = torch.tensor([chain + tokens], device=device)
        depths = [d for d, _ in step_shape.nodes]
        pos = torch.tensor([list(range(past, past + len(chain))) + [length - 1 + d for d in depths]], device=device)
        mask = tree_mask(step_shape, past, len(chain), model.dtype, device)
        hidden, logits = verify_forward(model, cache, ids, pos, mask)

        dist_at = functools.partial(_distribution, sampling, logits, seq[0, :length], banned, len(chain))
        path, token = accept_tree(step_shape, tokens, dist_at, gen)
        t2 = time.perf_counter()
        pending = keep_path(cache, step_shape, path, tokens, past, len(chain))
        new = [tokens[j] for j in path] + [token]
        seq[0, length : length + len(new)] = torch.tensor(new, device=device)
        length += len(new)
        feature = hidden[len(chain) - 1 if not path else len(chain) + path[-1]]
        chain = pending + [token]
        stats.record(len(step_shape.widths), len(tokens), len(path), t1 - t0, t2 - t1, time.perf_counter() - t0)
        emit(new)
    return seq[0, n:].tolist()



def verify_forward(model: PreTrainedModel, cache: Cache, ids: torch.Tensor, pos: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(post-norm hidden [n, hidden], logits [n, vocab]) in fp32 of the tree forward: the lean path where it
    covers model and cache, transformers' forward otherwise."""
    hidden = lean_hidden(model, cache, ids, pos, mask)
    if hidden is None:
        return hidden_and_logits(model, ids, cache, position_ids=pos, attention_mask=mask)
    return hidden.float(), model.get_output_embeddings()(hidden).float()


def _distribution(sampling: Sampling, logits: torch.Tensor, done: torch.Tensor, banned: list[int], chain: int,
                  node: int, path_tokens: list[int]) -> torch.Tensor:
    """The target's distribution after tree node ``node`` (-1: the root, the chain's last token)."""
    row = chain - 1 if node < 0 else chain + node
    history = torch.cat([done, torch.tensor(path_tokens, dtype=torch.long, device=done.device)])
    return sampling.distribution(logits[row], history[None], banned)


class TreeSpeculator(DecodingStrategy):
    """Base of the trained-head decoders: ``prepare`` loads the heads trained for the model (StrategyFailed with
    the command that trains them if there are none); a subclass gives ``kind``, ``num_heads``, ``shape`` and
    ``drafter``. Scoring is the step path (verification reads the same cache a step decoder would)."""

    lossless = True
    head_kind = ""  # which trained heads (strategies/training/heads.py); ``kind`` is "decoding", as for every decoder
    steps: int = DEFAULT_STEPS
    loaded: tuple | None = None  # (model, heads, training report), set by prepare
    plain_step_s = 0.0

    @property
    def num_heads(self) -> int:
        raise NotImplementedError

    def shape(self) -> TreeShape:
        raise NotImplementedError

    def drafter(self, heads: Heads) -> Drafter:
        raise NotImplementedError

    def prepare(self, model: PreTrainedModel, load=None) -> None:
        if self.loaded is None or self.loaded[0] is not model:
            heads, report = store.load(model, self.head_kind, self.num_heads, self.steps)
            self.loaded = (model, heads, report)
        self.plain_step_s = plain_step_seconds(model)

    def _heads(self, model: PreTrainedModel) -> tuple[Heads, dict]:
        if self.loaded is None or self.loaded[0] is not model:
            raise RuntimeError(f"{self.name}: call prepare(model) before generate — it loads the trained heads "
                               "(the runner does so before warm-up)")
        return self.loaded[1], self.loaded[2]

    def generate_each(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]],
                      max_new_tokens: int, sampling: Sampling, emit: Emit, stats: SpeculationStats) -> list[list[int]]:
        heads, report = self._heads(model)
        stats.extra.update({"heads_bytes": report.get("heads_bytes", 0), "heads_train_s": report.get("seconds", 0.0),
                            "heads_agreement": " ".join(f"{a:.3f}" for a in report.get("agreement", []))})
        shape, drafter = self.shape(), self.drafter(heads)
        outputs = []
        for i, prompt in enumerate(prompts):
            # the verify forward holds the tree (and at most one re-fed token) beyond what a step decoder holds
            cache = new_cache(1, len(prompt) + max_new_tokens + len(shape))
            outputs.append(tree_generate(model, cache, prompt, max_new_tokens, sampling, shape, drafter,
                                         lambda tokens, i=i: emit(i, tokens), stats))
        return outputs

    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        stats = SpeculationStats(plain_step_s=self.plain_step_s)
        tokens = self.generate_each(model, new_cache, prompts, max_new_tokens, sampling, emit, stats)
        return Generation(tokens, stats.row())

    def serve(self, model: PreTrainedModel, new_cache: NewCache, requests: list[Request], sampling: Sampling,
              emit: Emit, clock: ServeClock, cache: CacheStrategy | None = None) -> Generation:
        stats = SpeculationStats(plain_step_s=self.plain_step_s)

        def generate(prompts: list[list[int]], max_new_tokens: int, emit_one: Emit) -> Generation:
            tokens = self.generate_each(model, new_cache, prompts, max_new_tokens, sampling, emit_one, stats)
            return Generation(tokens, stats.row())

        return serve_one_by_one(generate, requests, emit, clock)


def topk_candidates(logits: torch.Tensor, vocab_ids: torch.Tensor, widths: tuple[int, ...]) -> list[list[int]]:
    """Ranked full-vocabulary candidates per depth from draft logits [depth, V']."""
    top = logits.topk(max(widths), dim=-1).indices
    return [vocab_ids[top[d, :w]].tolist() for d, w in enumerate(widths)]
