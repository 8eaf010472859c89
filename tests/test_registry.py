"""Strategy names, composition, parameter sweeps and their error messages; every module is registered."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import ClassVar

import pytest

import strategies
from strategies import registry
from strategies.core.base import CacheStrategy, DecodingStrategy, Strategy
from strategies.registry import REGISTRY, StrategyError, compose, expand, parse_params, split

# modules with no strategy of their own
INFRA = {"base", "registry", "sampling", "block_pool", "kv_quant", "lean_forward", "eviction", "speculation",
         "drafts", "requests", "scheduler", "paged_batch", "packed_linear"}


def test_every_strategy_module_is_registered():
    registered = {cls.__module__ for cls in REGISTRY.values()}
    for mod in pkgutil.iter_modules(strategies.__path__):
        if mod.name in INFRA:
            continue
        module = importlib.import_module(f"strategies.{mod.name}")
        classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Strategy)
                   and c.__module__ == module.__name__ and c.name]
        assert classes, f"strategies/{mod.name}.py defines no strategy (add it to INFRA if it is a helper)"
        assert module.__name__ in registered, f"strategies/{mod.name}.py is not in the registry"
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.kind in ("cache", "decoding") and cls.summary


def test_composition_defaults_and_errors():
    assert split("full") == ("step", "full")
    assert split("step") == ("step", "full")
    assert split("step+naive") == ("step", "naive")
    assert split("hf-generate") == ("hf-generate", None)
    with pytest.raises(StrategyError, match="unknown strategy 'nope'; allowed: naive, full"):
        split("nope")
    with pytest.raises(StrategyError, match="takes no cache strategy"):
        split("hf-generate+full")
    with pytest.raises(StrategyError, match="one decoding strategy, one cache strategy"):
        split("full+naive")


@dataclass
class _Toy(CacheStrategy):
    name: ClassVar[str] = "toy"
    summary: ClassVar[str] = "test-only"
    size: int = 4
    ratio: float = 0.5
    exact: bool = False

    def validate(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")


def test_param_sweep_expands_to_one_combination_per_value(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "toy", _Toy)
    sweeps = parse_params(["toy.size=2,8,16", "toy.exact=true"])
    assert sweeps == {"toy": {"size": [2, 8, 16], "exact": [True]}}
    combos = expand("toy", sweeps)
    assert [c["toy"]["size"] for c in combos] == [2, 8, 16]
    assert compose("toy", combos[1]).cache == _Toy(size=8, exact=True)
    assert registry.params_label(combos[0]) == "toy.exact=True;toy.size=2"


def test_param_errors_name_what_is_allowed(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "toy", _Toy)
    with pytest.raises(StrategyError, match=r"unknown parameter toy.sise; allowed: toy.size, toy.ratio, toy.exact"):
        parse_params(["toy.sise=3"])
    with pytest.raises(StrategyError, match=r"toy.size='big' is not a valid int"):
        parse_params(["toy.size=big"])
    with pytest.raises(StrategyError, match="must look like"):
        parse_params(["toy.size"])
    with pytest.raises(StrategyError, match="size must be >= 1, got 0"):
        expand("toy", parse_params(["toy.size=0"]))


def test_strategy_kinds():
    assert issubclass(REGISTRY["full"], CacheStrategy) and issubclass(REGISTRY["step"], DecodingStrategy)
