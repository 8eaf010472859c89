"""Trained heads on disk, under ``$KVBENCH_CACHE/heads/<weights hash>/``, keyed by the training settings.

The key is the hash of the target's weights (so heads never run on a model they were not trained for, whatever
it is called) and of the settings that change the result: the kind, the number of heads, the steps and the data
recipe version. A strategy whose heads are missing fails its cell with the exact command that trains them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from strategies.core.base import StrategyFailed
from strategies.training.heads import Heads, build_heads

RECIPE = "sd2"  # the self-distillation data recipe (bench/commands/train_heads.py); bump when it changes
DEFAULT_STEPS = 1000  # held-out loss is lowest near 1000 steps on the sd2 data (2000 overfits); 85 s for mtp
EMBEDDED_DIR_SUFFIX = "smollm2-135m-instruct-shards"  # the embedded model's converted directory (bench.models)


def cache_root() -> Path:
    return Path(os.environ.get("KVBENCH_CACHE", Path.home() / ".cache" / "kvbench"))


def weights_hash(model: nn.Module) -> str:
    """blake2b over every parameter and buffer, in module order (a oneDNN-packed linear hashes its dense values,
    so packing does not change the key). Computed once per model object."""
    cached = getattr(model, "_kvbench_weights_hash", None)
    if cached:
        return cached
    digest = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, module in model.named_modules():
            tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            if hasattr(module, "packed") and hasattr(module, "to_linear"):
                tensors.append(("weight", module.weight))
            for tname, t in sorted(tensors, key=lambda item: item[0]):
                if t is None or t.is_meta:
                    continue
                digest.update(f"{name}.{tname}:{tuple(t.shape)}:{t.dtype}".encode())
                digest.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    model._kvbench_weights_hash = digest.hexdigest()
    return model._kvbench_weights_hash


def settings_key(kind: str, num_heads: int, steps: int) -> str:
    text = json.dumps({"kind": kind, "heads": num_heads, "steps": steps, "recipe": RECIPE}, sort_keys=True)
    return f"{kind}-h{num_heads}-s{steps}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def heads_path(model: nn.Module, kind: str, num_heads: int, steps: int) -> Path:
    return cache_root() / "heads" / weights_hash(model) / f"{settings_key(kind, num_heads, steps)}.pt"


def model_label(model: nn.Module) -> str:
    """The ``--model`` that names ``model`` in a command line, as far as the model itself tells."""
    path = str(getattr(model.config, "name_or_path", "") or "")
    if path.rstrip("/").endswith(EMBEDDED_DIR_SUFFIX):
        return "smollm2-135m"
    return path or getattr(model, "_kvbench_spec", None) or "<the model of this run>"


def train_command(model: nn.Module, kind: str, num_heads: int, steps: int) -> str:
    return f"kvbench train-heads --model {model_label(model)} --kind {kind} --heads {num_heads} --steps {steps}"


def save(heads: Heads, report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = dict(heads.state_dict())
    torch.save({"kind": heads.kind, "settings": heads.settings(), "state": state, "report": report}, tmp)
    tmp.replace(path)  # never a half-written file under the key


def load(model: nn.Module, kind: str, num_heads: int, steps: int) -> tuple[Heads, dict]:
    """The heads trained for ``model`` with these settings, attached to it; StrategyFailed naming the command
    that trains them if there are none."""
    path = heads_path(model, kind, num_heads, steps)
    if not path.exists():
        raise StrategyFailed(f"no trained {kind} heads for this model (heads={num_heads}, steps={steps}; looked in "
                             f"{path}): train them with `{train_command(model, kind, num_heads, steps)}`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    s = blob["settings"]
    heads = build_heads(kind, s["hidden"], s["num_heads"], torch.zeros(s["vocab"], dtype=torch.long))
    heads.load_state_dict(blob["state"])
    device = next(model.parameters()).device
    return heads.to(device).eval().attach(model), blob["report"]
