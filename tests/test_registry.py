"""Strategy names, composition, parameter sweeps and their error messages; every named strategy is registered."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import ClassVar

import pytest

from strategies import registry
from strategies.core.base import CacheStrategy, DecodingStrategy, Strategy
from strategies.registry import REGISTRY, StrategyError, compose, expand, parse_params, split

# Folders whose modules define strategies (each one registered) and folders of helpers that define none.
STRATEGY_FOLDERS = ("caches", "decoding", "scheduling", "peers")
HELPER_FOLDERS = ("core", "kernels")


def modules_under(folder: str) -> list[ModuleType]:
    package = importlib.import_module(f"strategies.{folder}")
    return [importlib.import_module(m.name) for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]


def named_strategies(module: ModuleType) -> list[type[Strategy]]:
    """Strategy classes ``module`` defines that declare a name of their own (bases such as EvictionCache declare
    none, or an empty one)."""
    return [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Strategy)
            and c.__module__ == module.__name__ and vars(c).get("name")]


@pytest.mark.parametrize("folder", STRATEGY_FOLDERS)
def test_every_named_strategy_is_registered(folder):
    modules = modules_under(folder)
    assert modules, f"strategies/{folder}/ holds no module"
    for module in modules:
        for cls in named_strategies(module):
            assert REGISTRY.get(cls.name) is cls, (f"{module.__name__}.{cls.__name__} (name {cls.name!r}) is not "
                                                   "registered: add it to strategies/registry.py")


@pytest.mark.parametrize("folder", HELPER_FOLDERS)
def test_core_and_kernels_define_no_strategy(folder):
    for module in modules_under(folder):
        found = [c.__name__ for c in named_strategies(module)]
        assert not found, f"{module.__name__} defines strategies {found}; they belong in {STRATEGY_FOLDERS}"


def test_registry_entries_live_in_strategy_folders():
    folders = tuple(f"strategies.{f}." for f in STRATEGY_FOLDERS)
    for name, cls in REGISTRY.items():
        assert cls.__module__.startswith(folders), f"{name}: {cls.__module__} is outside {STRATEGY_FOLDERS}"
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
    size: int = field(default=4, metadata={"help": "tokens kept, >= 1"})
    ratio: float = field(default=0.5, metadata={"help": "share of the prompt"})
    exact: bool = False
    built: int | None = field(default=None, init=False)  # filled by the strategy: not a parameter

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
    with pytest.raises(StrategyError, match=r"unknown parameter toy.sise; allowed: toy.size, toy.ratio, toy.exact"
                                            r" — toy.size \(int, default 4\): tokens kept, >= 1; "
                                            r"toy.ratio \(float, default 0.5\): share of the prompt; "
                                            r"toy.exact \(bool, default False\)$"):
        parse_params(["toy.sise=3"])
    with pytest.raises(StrategyError, match=r"toy.size='big' is not a valid int — toy.size \(int, default 4\): "
                                            r"tokens kept, >= 1$"):
        parse_params(["toy.size=big"])
    with pytest.raises(StrategyError, match="must look like"):
        parse_params(["toy.size"])
    with pytest.raises(StrategyError, match=r"size must be >= 1, got 0 — toy.size \(int, default 4\): tokens kept"):
        expand("toy", parse_params(["toy.size=0"]))
    with pytest.raises(StrategyError, match="unknown parameter toy.built"):
        parse_params(["toy.built=1"])


@pytest.mark.parametrize("name", REGISTRY)
def test_every_parameter_says_what_it_means(name):
    params = registry.parameters(name)
    assert [p.name for p in params] == list(registry.declared(name))
    for p in params:
        assert p.help.strip() and "\n" not in p.help, f"{name}.{p.name} has no one-line help"
        assert p.type in ("int", "float", "bool", "str"), f"{name}.{p.name}: type {p.type!r}"


def test_list_prints_parameters_with_type_default_and_help(capsys):
    from bench.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    draft_help = registry.parameters("speculative")[0].help
    assert "speculative.draft=layers:8 (str): " + draft_help in out and "layers:N" in draft_help
    assert "continuous.chunked_prefill=0 (int): " in out and "sinks.sinks=4 (int): " in out


def test_strategy_kinds():
    assert issubclass(REGISTRY["full"], CacheStrategy) and issubclass(REGISTRY["step"], DecodingStrategy)
