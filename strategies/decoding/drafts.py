"""Draft models for ``speculative`` and ``hf-assisted``: built once per target in the decoder's ``prepare`` (before
warm-up, untimed), each run with a full-precision cache of its own.

- ``layers:N`` — self-draft (LayerSkip-style early exit): the target's first N decoder layers, its final norm and
  LM head. A *view*: shallow copies of the model objects whose layer list holds the first N layers, so no weight
  is copied. Works for families whose decoder keeps its layers in one ``ModuleList`` (``model.layers``: llama,
  mistral, qwen2/3...; ``transformer.h``: gpt2).
- ``int8`` — the target with int8 dynamically quantized linear weights (torch's CPU int8 path).
- ``bf16`` — the target's weights in bfloat16 (a copy: +half the target's bytes), packed for oneDNN like the target.
- anything else — a model spec (local directory, hub id) sharing the tokenizer, loaded by the ``load`` callable the
  runner hands to ``prepare`` (strategies never import the runner's model loading).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from strategies.caches.full import PreallocatedLayer
from strategies.core.base import KVCache, Unsupported, num_cache_layers
from strategies.core.forward import forward_logits
from strategies.core.sampling import Sampling, draw
from strategies.kernels.lean_forward import lean_decoder

# load(spec) -> a model in the target's dtype and device (the runner's loader)
LoadModel = Callable[[str], PreTrainedModel]
LAYER_LISTS = ("layers", "h")  # where decoder families keep their blocks


def parse_layers(spec: str) -> int | None:
    """'layers:8' -> 8; other specs -> None. Raises ValueError on a malformed count."""
    if not spec.startswith("layers:"):
        return None
    count = spec.split(":", 1)[1]
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"draft {spec!r}: layers:N needs a whole number N >= 1")
    return int(count)


def _view(module: nn.Module) -> nn.Module:
    """A shallow copy whose submodule table is its own, so replacing a child leaves ``module`` untouched."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def truncated(model: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """The first ``num_layers`` decoder layers of ``model`` with its embeddings, final norm and LM head (shared)."""
    total = num_cache_layers(model.config)
    if not 1 <= num_layers < total:
        raise ValueError(f"draft layers:{num_layers}: N must be in 1..{total - 1} for a {total}-layer target")
    base_name = model.base_model_prefix
    base = getattr(model, base_name, None)
    attr = next((a for a in LAYER_LISTS if isinstance(getattr(base, a, None), nn.ModuleList)), None)
    if base is None or attr is None:
        raise Unsupported(f"draft layers:N: {type(model).__name__} keeps no decoder layer list "
                          f"({' or '.join(f'{base_name}.{a}' for a in LAYER_LISTS)}) to truncate")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    if hasattr(config, "n_layer"):
        config.n_layer = num_layers
    draft, draft_base = _view(model), _view(base)
    setattr(draft_base, attr, nn.ModuleList(list(getattr(base, attr))[:num_layers]))
    draft_base.config = draft.config = config
    draft.generation_config = copy.deepcopy(model.generation_config)  # transformers' assisted generation edits it
    setattr(draft, base_name, draft_base)
    return draft


def int8_weights(model: PreTrainedModel) -> PreTrainedModel:
    if model.device.type != "cpu":
        raise Unsupported("draft int8 uses torch's dynamic int8 linear kernels, which run on CPU only")
    from strategies.kernels.packed_linear import unpacked  # torch's quantizer only knows nn.Linear

    return torch.ao.quantization.quantize_dynamic(unpacked(copy.deepcopy(model)), {nn.Linear}, dtype=torch.qint8)


def bf16_weights(model: PreTrainedModel) -> PreTrainedModel:
    """The target in bfloat16 (half the bytes per token read; oneDNN-packed on CPU like the target)."""
    from strategies.kernels.packed_linear import pack_linear_weights, unpacked

    if model.dtype == torch.bfloat16:
        raise Unsupported("draft bf16: the target already runs in bfloat16; a same-precision copy cannot be faster")
    draft = unpacked(copy.deepcopy(model)).to(torch.bfloat16)
    draft._kvbench_packed = draft._kvbench_lean = None  # copied from the target: this copy is neither
    if getattr(model, "_kvbench_packed", None):
        pack_linear_weights(draft)
    return draft


def build_draft(model: PreTrainedModel, spec: str, load: LoadModel | None = None) -> PreTrainedModel:
    if (num_layers := parse_layers(spec)) is not None:
        return truncated(model, num_layers)
    if spec == "int8":
        return int8_weights(model)
    if spec == "bf16":
        return bf16_weights(model)
    if load is None:
        raise Unsupported(f"draft {spec!r} is a model spec: it needs a model loader (run it through kvbench)")
    draft = load(spec)
    if draft.config.get_text_config().vocab_size != model.config.get_text_config().vocab_size:
        raise ValueError(f"draft {spec!r} has a vocabulary of {draft.config.vocab_size} ids, the target "
                         f"{model.config.vocab_size}: a draft must share the target's tokenizer")
    return draft


@dataclass(frozen=True)
class PreparedDraft:
    """A draft and the target it was built for (a ``layers:N`` draft shares that target's modules)."""

    target: PreTrainedModel
    model: PreTrainedModel


def prepare_draft(prepared: PreparedDraft | None, target: PreTrainedModel, spec: str,
                  load: LoadModel | None = None) -> PreparedDraft:
    """The draft of ``spec`` for ``target``: the one already prepared for it, else a new one."""
    if prepared is not None and prepared.target is target:
        return prepared
    return PreparedDraft(target, build_draft(target, spec, load))


def draft_for(prepared: PreparedDraft | None, target: PreTrainedModel, decoder: str) -> PreTrainedModel:
    """The draft prepared for ``target``; building one while generating would put its cost in the timed run."""
    if prepared is None or prepared.target is not target:
        raise RuntimeError(f"{decoder}: call prepare(model) before generate — it builds the draft for that model "
                           "(the runner does so before warm-up)")
    return prepared.model


class ModelProposer:
    """Proposes by decoding the draft model greedily or by sampling, over the draft's own preallocated cache."""

    def __init__(self, draft: PreTrainedModel, seq: torch.Tensor, end: int, generator: torch.Generator,
                 banned: list[int], sampling: Sampling):
        self.draft, self.sampling, self.generator, self.banned = draft, sampling, generator, banned
        self.cache = KVCache([PreallocatedLayer(end) for _ in range(num_cache_layers(draft.config))])
        self.fed = 0  # tokens of seq in the draft's cache
        self.lean = lean_decoder(draft, self.cache)

    def propose(self, seq: torch.Tensor, length: int, max_drafts: int) -> tuple[list[int], torch.Tensor | None]:
        tokens, dists = [], []
        for cur in range(length, length + max_drafts):
            if cur - self.fed == 1 and self.lean is not None and self.lean.usable_at(self.fed):
                logits = self.lean.step(seq[0, self.fed], self.fed, self.cache)  # the draft's own lean forward
            else:
                logits = forward_logits(self.draft, seq[:, self.fed : cur], self.cache, self.fed)[-1]
            self.fed = cur
            dist = self.sampling.distribution(logits, seq[:, :cur], self.banned)
            token = int(dist.argmax()) if self.sampling.is_greedy else int(draw(dist, self.generator))
            seq[0, cur] = token
            tokens.append(token)
            dists.append(dist)
        return tokens, torch.stack(dists) if dists else None

    def accepted(self, length: int, predicted: list[int], num_accepted: int) -> None:
        keep = min(self.fed, length - 1)  # the last accepted token has not been fed yet
        if keep < self.fed:
            self.cache.crop(keep - self.fed)
            self.fed = keep
