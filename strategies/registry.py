"""Name -> strategy class, and the parsing of ``a+b`` compositions and ``--param name.key=v1,v2`` sweeps.

A cell's strategy is one decoding strategy over one cache strategy. A bare cache name runs under ``step``
decoding; a bare decoding name runs over the ``full`` cache. A parameter is a dataclass field with a default and a
one-line ``metadata={"help": ...}``; ``parameters`` lists them for ``kvbench list`` and the ``--param`` errors.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, NamedTuple

from transformers import Cache, PreTrainedModel

from strategies.caches.chunk_summary import ChunkSummary
from strategies.caches.eviction.h2o import H2O
from strategies.caches.eviction.keynorm import KeyNorm
from strategies.caches.eviction.snapkv import SnapKV
from strategies.caches.eviction.tova import TOVA
from strategies.caches.full import FullCache
from strategies.caches.naive import NoCache
from strategies.caches.paged import Paged
from strategies.caches.prefix_cache import PrefixCache
from strategies.caches.quantized import QuantInt4, QuantInt8, QuantMixed
from strategies.caches.static import Static
from strategies.caches.window import Sinks, SlidingWindow
from strategies.core.base import CacheStrategy, DecodingStrategy, NewCache, Strategy
from strategies.decoding.eagle import Eagle
from strategies.decoding.lookahead import Lookahead
from strategies.decoding.medusa import Medusa
from strategies.decoding.mtp import MTP
from strategies.decoding.prompt_lookup import PromptLookup
from strategies.decoding.speculative import Speculative
from strategies.decoding.step import StepDecoding
from strategies.peers.hf_assisted import HFAssisted, HFPromptLookup
from strategies.peers.hf_batch import HFBatch
from strategies.peers.hf_continuous import HFContinuous
from strategies.peers.hf_generate import HFGenerate
from strategies.peers.hf_own_caches import HFQuantized, HFStatic
from strategies.peers.llamacpp import LlamaCpp
from strategies.peers.onnxruntime import OnnxRuntime
from strategies.scheduling.continuous import ContinuousBatching
from strategies.scheduling.sequential import Sequential
from strategies.scheduling.static_batch import StaticBatch

REGISTRY: dict[str, type[Strategy]] = {
    "naive": NoCache,
    "full": FullCache,
    "step": StepDecoding,
    "hf-generate": HFGenerate,
    "paged": Paged,
    "static": Static,
    "sliding-window": SlidingWindow,
    "sinks": Sinks,
    "chunk-summary": ChunkSummary,
    "hf-static": HFStatic,
    "hf-quantized": HFQuantized,
    "quant-int8": QuantInt8,
    "quant-int4": QuantInt4,
    "quant-mixed": QuantMixed,
    "snapkv": SnapKV,
    "h2o": H2O,
    "tova": TOVA,
    "keynorm": KeyNorm,
    "speculative": Speculative,
    "prompt-lookup": PromptLookup,
    "lookahead": Lookahead,
    "medusa": Medusa,
    "eagle": Eagle,
    "mtp": MTP,
    "hf-assisted": HFAssisted,
    "hf-prompt-lookup": HFPromptLookup,
    "llamacpp": LlamaCpp,
    "onnxruntime": OnnxRuntime,
    "sequential": Sequential,
    "static-batch": StaticBatch,
    "continuous": ContinuousBatching,
    "prefix-cache": PrefixCache,
    "hf-batch": HFBatch,
    "hf-continuous": HFContinuous,
}
DEFAULT_DECODER, DEFAULT_CACHE = "step", "full"


class StrategyError(ValueError):
    pass


@dataclass
class Composition:
    """One runnable strategy: a decoder and (unless it drives its own) a cache, with their parameters."""

    decoder: DecodingStrategy
    cache: CacheStrategy | None

    @property
    def lossless(self) -> bool:
        return self.decoder.lossless and (self.cache is None or self.cache.lossless)

    def cache_factory(self, model: PreTrainedModel) -> NewCache:
        """The ``new_cache(batch, max_len)`` a decoder is handed: this composition's cache over ``model``, or None
        every time (naive recomputes; peers drive transformers' own cache)."""
        cache = self.cache

        def new_cache(batch: int, max_len: int) -> Cache | None:
            return cache.new_cache(model, batch, max_len) if cache is not None else None

        return new_cache


def split(spec: str) -> tuple[str, str | None]:
    """'speculative+quant-int8' -> ('speculative', 'quant-int8'); 'full' -> ('step', 'full')."""
    names = [n.strip() for n in spec.split("+") if n.strip()]
    for n in names:
        if n not in REGISTRY:
            raise StrategyError(f"unknown strategy {n!r}; allowed: {', '.join(REGISTRY)} (compose as decoder+cache)")
    decoders = [n for n in names if REGISTRY[n].kind == "decoding"]
    caches = [n for n in names if REGISTRY[n].kind == "cache"]
    if not names or len(decoders) > 1 or len(caches) > 1:
        raise StrategyError(f"strategy {spec!r} must be one decoding strategy, one cache strategy, or decoder+cache")
    decoder = decoders[0] if decoders else DEFAULT_DECODER
    if not REGISTRY[decoder].takes_cache:  # type: ignore[attr-defined]
        if caches:
            raise StrategyError(f"{decoder!r} drives transformers' own cache and takes no cache strategy "
                                f"(got {spec!r}); run it alone")
        return decoder, None
    cache = caches[0] if caches else getattr(REGISTRY[decoder], "default_cache", DEFAULT_CACHE)
    allowed = getattr(REGISTRY[decoder], "allowed_caches", None)
    if allowed and cache not in allowed:
        raise StrategyError(f"{decoder!r} runs over {' or '.join(allowed)}, not {cache!r} (got {spec!r})")
    return decoder, cache


class Param(NamedTuple):
    """One declared parameter of a strategy: its name, type (as written), default and one-line help."""

    name: str
    type: str
    default: Any
    help: str


def parameters(name: str) -> list[Param]:
    """The parameters of strategy ``name`` in declaration order; fields a strategy fills itself (init=False) are
    not parameters."""
    return [Param(f.name, f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)), f.default,
                  f.metadata.get("help", ""))
            for f in fields(REGISTRY[name]) if f.init and f.default is not MISSING]


def declared(name: str) -> dict[str, Any]:
    """Parameter name -> default for strategy ``name``."""
    return {p.name: p.default for p in parameters(name)}


def describe(name: str, keys: list[str] | None = None) -> str:
    """'name.key (type, default D): help; ...' for ``keys`` (default: every parameter) on one line."""
    return "; ".join(f"{name}.{p.name} ({p.type}, default {p.default!r})" + (f": {p.help}" if p.help else "")
                     for p in parameters(name) if keys is None or p.name in keys)


def coerce(name: str, key: str, value: str) -> Any:
    """Parse ``value`` as the declared type of ``name.key``."""
    allowed = declared(name)
    if key not in allowed:
        listed = ", ".join(f"{name}.{k}" for k in allowed)
        detail = f"{listed} — {describe(name)}" if allowed else f"{name} takes none"
        raise StrategyError(f"unknown parameter {name}.{key}; allowed: {detail}")
    hints = typing.get_type_hints(REGISTRY[name])
    kind = hints.get(key, type(allowed[key]))
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if kind in (int, float):
            return kind(value)
        if typing.get_origin(kind) is typing.Union or isinstance(kind, type(int | None)):
            for option in typing.get_args(kind):
                if option is type(None):
                    continue
                try:
                    return option(value)
                except ValueError:
                    continue
            raise ValueError
        return value
    except ValueError:
        kind_name = getattr(kind, "__name__", kind)
        raise StrategyError(f"parameter {name}.{key}={value!r} is not a valid {kind_name} — "
                            f"{describe(name, [key])}") from None


def parse_params(items: list[str]) -> dict[str, dict[str, list[Any]]]:
    """['quant-int4.group_size=32,64'] -> {'quant-int4': {'group_size': [32, 64]}} (types checked)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        target, eq, values = item.partition("=")
        name, dot, key = target.rpartition(".")
        if not eq or not dot or not values:
            raise StrategyError(f"--param {item!r} must look like <strategy>.<key>=<v1>[,<v2>...]")
        if name not in REGISTRY:
            raise StrategyError(f"--param {item!r}: unknown strategy {name!r}; allowed: {', '.join(REGISTRY)}")
        out.setdefault(name, {})[key] = [coerce(name, key, v) for v in values.split(",")]
    return out


def build(name: str, params: dict[str, Any]) -> Strategy:
    try:
        return REGISTRY[name](**params)
    except (TypeError, ValueError) as e:
        allowed = f" — {describe(name)}" if parameters(name) else ""
        raise StrategyError(f"strategy {name!r}: {e}{allowed}") from None


def compose(spec: str, params: dict[str, dict[str, Any]]) -> Composition:
    decoder, cache = split(spec)
    return Composition(build(decoder, params.get(decoder, {})),  # type: ignore[arg-type]
                       build(cache, params.get(cache, {})) if cache else None)  # type: ignore[arg-type]


def expand(spec: str, sweeps: dict[str, dict[str, list[Any]]]) -> list[dict[str, dict[str, Any]]]:
    """Every parameter combination for ``spec``: one dict {strategy: {key: value}} per row, validated."""
    decoder, cache = split(spec)
    axes = [(n, k, vs) for n in (decoder, cache) if n for k, vs in sweeps.get(n, {}).items()]
    combos = []
    for values in itertools.product(*(vs for _, _, vs in axes)) if axes else [()]:
        params: dict[str, dict[str, Any]] = {}
        for (n, k, _), v in zip(axes, values):
            params.setdefault(n, {})[k] = v
        compose(spec, params)  # validate now, before any cell is spawned
        combos.append(params)
    return combos


def params_label(params: dict[str, dict[str, Any]]) -> str:
    return ";".join(f"{n}.{k}={v}" for n, kv in sorted(params.items()) for k, v in sorted(kv.items()))
