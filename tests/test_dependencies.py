"""pyproject.toml, requirements.lock and the code's imports agree: every dependency declared is locked inside its
range, every third-party import is declared, and every declared dependency is used (or says why it is there)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Declared but never imported by our code, and why they are there.
NOT_IMPORTED = {
    "gguf": "transformers reads the embedded GGUF model through it",
    "accelerate": "transformers' meta-device loading",
    "pytest-benchmark": "a pytest plugin (the `benchmark` fixture)",
    "pytest-xdist": "a pytest plugin (make test's -n workers)",
    "ruff": "a linter (make lint)",
    "uv": "writes the lock (make lock)",
    "optimum-quanto": "transformers' QuantizedCache backend (hf-quantized)",
}


def declared() -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    return reqs + [Requirement(r) for extra in PYPROJECT["optional-dependencies"].values() for r in extra]


def locked(text: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """name -> [(version, marker)] from the lock's `name==version ; marker` lines."""
    text = text if text is not None else (ROOT / "requirements.lock").read_text()
    out: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.*))?$", line.strip()):
            out.setdefault(canonicalize_name(m[1]), []).append((m[2], m[3] or ""))
    return out


def disagreements(reqs: list[Requirement], lock: dict[str, list[tuple[str, str]]]) -> list[str]:
    problems = []
    for req in reqs:
        pins = [v for v, marker in lock.get(canonicalize_name(req.name), []) if not marker or Marker(marker).evaluate()]
        if not pins:
            problems.append(f"{req.name} is declared in pyproject.toml but not pinned in requirements.lock")
        problems += [f"{req.name}=={v} in requirements.lock is outside pyproject.toml's {req}" for v in pins
                     if v not in req.specifier]
    return problems


def test_every_declared_dependency_is_locked_inside_its_range():
    assert disagreements(declared(), locked()) == []


def test_a_lock_that_disagrees_with_pyproject_is_caught():
    lock = locked("torch==2.13.0\ntransformers==5.30.1\n")
    problems = disagreements([Requirement("transformers>=5.23,<5.25"), Requirement("rich>=13")], lock)
    assert problems == [
        "transformers==5.30.1 in requirements.lock is outside pyproject.toml's transformers<5.25,>=5.23",
        "rich is declared in pyproject.toml but not pinned in requirements.lock"]


def test_the_lock_says_how_to_regenerate_it_and_pins_torch_for_the_makefile():
    text = (ROOT / "requirements.lock").read_text()
    assert "uv pip compile pyproject.toml" in text.splitlines()[1]
    assert "$(BIN)/uv pip compile pyproject.toml" in (ROOT / "Makefile").read_text()
    assert [v for v, _ in locked()["torch"]] == ["2.13.0"]  # the Makefile's default TORCH_VERSION is read from here


@pytest.mark.skipif(os.environ.get("KVBENCH_UNLOCKED") == "1", reason="make test-latest runs unlocked on purpose")
def test_the_installed_environment_is_the_locked_one():
    lock = locked()
    for name in ("transformers", "numpy", "scipy", "rich", "matplotlib"):
        pins = [v for v, marker in lock[name] if not marker or Marker(marker).evaluate()]
        assert md.version(name) in pins, f"{name} {md.version(name)} installed, lock pins {pins}: run make setup"


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it, over bench/, strategies/ and tests/ (stdlib and our own left out)."""
    ours = {"bench", "strategies", "tests"}
    found: dict[str, set[str]] = {}
    for path in [p for d in ours for p in (ROOT / d).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top not in ours and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


# Modules of optional extras whose name differs from their distribution's: where the extra is not installed (CI),
# installed metadata cannot say which distribution provides them.
OPTIONAL_MODULES = {"llama_cpp": "llama-cpp-python"}


def test_every_import_is_declared_and_every_declaration_is_used_or_explained():
    dists = md.packages_distributions()
    names = {canonicalize_name(r.name) for r in declared()}
    imported = {}
    for module, files in third_party_imports().items():
        for dist in dists.get(module, [OPTIONAL_MODULES.get(module, module)]):
            imported[canonicalize_name(dist)] = files
    undeclared = {d: sorted(f) for d, f in imported.items() if d not in names and d != "kvbench"}
    assert undeclared == {}, "imported but not declared in pyproject.toml"
    unused = names - set(imported) - {canonicalize_name(n) for n in NOT_IMPORTED}
    assert unused == set(), "declared but never imported (use it, drop it, or say why in NOT_IMPORTED)"
