"""A causal LM exported to ONNX with its KV cache as graph inputs and outputs, written once per weights and dtype.

The graph (``torch.onnx.export``, the dynamo exporter): ``input_ids`` [batch, seq] and, per layer,
``past_key_{i}`` / ``past_value_{i}`` [batch, kv_heads, past, head_dim] in; ``logits`` [batch, 1, vocab] (the last
position only: a prefill's logits for every position would be seq × vocab floats nobody reads) and
``present_key_{i}`` / ``present_value_{i}`` [batch, kv_heads, past + seq, head_dim] out. Batch, seq and past are
dynamic, past may be 0 (the prefill). Positions are ``past + arange(seq)`` and there is no attention mask: one
unpadded sequence per row, which is how the peer feeds it.

Files live in ``$KVBENCH_CACHE/onnx/<weights hash>-<dtype>-<recipe>/`` (model.onnx, its external weights, meta.json
with the export's seconds): the directory is built under a temporary name and renamed into place, so a reader never
sees half an export, and two cells racing to export keep the first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from strategies.core.base import kv_shape
from strategies.training.store import cache_root, weights_hash

RECIPE = "kv1"  # the graph's interface (names, last-position logits, positions); bump when it changes
MODEL_FILE, META_FILE = "model.onnx", "meta.json"


def input_names(layers: int) -> list[str]:
    return ["input_ids"] + [f"past_key_{i}" for i in range(layers)] + [f"past_value_{i}" for i in range(layers)]


def output_names(layers: int) -> list[str]:
    return ["logits"] + [f"present_key_{i}" for i in range(layers)] + [f"present_value_{i}" for i in range(layers)]


class KVGraph(nn.Module):
    """Flat tensors in and out around the model's own forward: the past K/V become a DynamicCache, the cache
    after the forward comes back as the present K/V."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past_keys: list[torch.Tensor], past_values: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(zip(past_keys, past_values)):
            cache.update(k, v, i)
        batch, seq = input_ids.shape
        positions = (torch.arange(seq, device=input_ids.device) + past_keys[0].shape[2]).unsqueeze(0)
        out = self.model(input_ids=input_ids, past_key_values=cache, position_ids=positions.expand(batch, -1),
                         use_cache=True, logits_to_keep=1)
        layers = out.past_key_values.layers
        return out.logits, [layer.keys for layer in layers], [layer.values for layer in layers]


def export_dir(model: PreTrainedModel) -> Path:
    """Where ``model``'s graph is cached: keyed by the hash of its weights (not its name), its dtype and the
    attention implementation it was traced through (sdpa and eager export different graphs)."""
    dtype = str(model.dtype).removeprefix("torch.")
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    return cache_root() / "onnx" / f"{weights_hash(model)}-{dtype}-{attn}-{RECIPE}"


def export(model: PreTrainedModel, target: Path) -> dict[str, Any]:
    """Export ``model`` into the directory ``target`` (created; must not exist); returns its meta.json."""
    layers, kv_heads, head_dim = kv_shape(model.config)
    # example shapes all different and > 1, so the exporter keeps each axis symbolic
    ids = torch.zeros(2, 3, dtype=torch.long, device=model.device)
    past = [torch.zeros(2, kv_heads, 5, head_dim, dtype=model.dtype, device=model.device) for _ in range(2 * layers)]
    batch, seq, length = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    kv_axes = [{0: batch, 2: length}] * layers
    shapes = {"input_ids": {0: batch, 1: seq}, "past_keys": kv_axes, "past_values": kv_axes}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like every other under KVBENCH_CACHE
    try:
        start = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter, once per export
            torch.onnx.export(KVGraph(model).eval(), (ids, past[:layers], past[layers:]), str(tmp / MODEL_FILE),
                              dynamo=True, dynamic_shapes=shapes, input_names=input_names(layers),
                              output_names=output_names(layers), external_data=True, optimize=True, verbose=False)
        meta = {"export_s": time.perf_counter() - start, "torch_version": torch.__version__, "recipe": RECIPE,
                "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}
        (tmp / META_FILE).write_text(json.dumps(meta))
        try:
            os.rename(tmp, target)  # atomic; fails when another process got there first, whose export is as good
        except OSError:
            if not (target / META_FILE).exists():
                raise
        return json.loads((target / META_FILE).read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def exported(model: PreTrainedModel) -> tuple[Path, dict[str, Any], bool]:
    """(model.onnx of ``model``, its meta, whether it was already cached), exporting it the first time."""
    target = export_dir(model)
    if (target / META_FILE).exists():
        return target / MODEL_FILE, json.loads((target / META_FILE).read_text()), True
    return target / MODEL_FILE, export(model, target), False


def graph_bytes(path: Path) -> int:
    """Bytes of the graph and its external weights on disk."""
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())
