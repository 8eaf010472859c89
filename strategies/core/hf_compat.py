"""The transformers internals kvbench leans on, named in one place with the versions they were checked on.

transformers 5.24 renamed the cache argument of every model forward (and of the attention modules, which our
eviction hooks read) from ``past_key_values`` to ``cache``; the old name still works until 5.40 with a
FutureWarning, but a hook that looks for the old name in the attention kwargs sees nothing and evicts nothing.
So the name is read off the model's own signature instead of being assumed.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

# The range tests/test_hf_compat.py checks these assumptions on (pyproject.toml admits the same).
TESTED_TRANSFORMERS = ">=5.23,<5.25"
CACHE_NAMES = ("cache", "past_key_values")  # newest first


@functools.cache
def _cache_kwarg(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise TypeError(f"{cls.__name__}.forward takes neither of {CACHE_NAMES}: this transformers version's cache "
                    f"argument is unknown to kvbench (tested {TESTED_TRANSFORMERS})")


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name under which ``model``'s forward takes a Cache: 'cache' (transformers >= 5.24) or 'past_key_values'."""
    return _cache_kwarg(type(model))


def with_cache(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``model(**with_cache(model, cache), ...)``: the cache under the name this transformers expects."""
    return {cache_kwarg(model): cache}


def cache_in(kwargs: dict[str, Any]) -> Any:
    """The Cache an attention module was called with, under either name (forward hooks read it from kwargs)."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None
