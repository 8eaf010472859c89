"""The import graph of bench/ and strategies/, read with ast (nothing is imported): no cycles, nothing in strategies/
imports bench/, and every module imports only its own layer or lower ones.

Every import counts, a function's lazy import too (it is a dependency all the same), except those under
``if TYPE_CHECKING:``, which never run. ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
``a.b``. docs/DESIGN.md cites LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("strategies", "bench")

# Lowest first. A module belongs to the entry with the longest dotted prefix of its name and may import modules of
# its own layer or of lower ones; the entries of one tuple share a layer (they may import each other, no cycles).
LAYERS: list[tuple[str, ...]] = [
    ("strategies.kernels",),  # tensor kernels: K/V quantization, packed linears, the lean decode forward
    ("strategies.core",),  # the two interfaces, the forward helpers, sampling, requests
    ("strategies.caches",),  # cache strategies, eviction included, and the block pool
    ("strategies.training",),  # trained speculation heads: modules, self-distillation data, AdamW, on-disk store
    ("strategies.decoding",),  # decoders: step, speculation and its drafts
    ("strategies.scheduling",),  # schedulers serving many requests
    ("strategies.peers",),  # transformers' own paths, run as peer rows
    ("strategies.registry",),  # names -> classes, compositions, --param parsing
    ("bench.env", "bench.models", "bench.key"),  # the machine and library versions; model loading; cell keys
    ("bench.results",),  # row columns and files, the report, compare, history
    ("bench.workloads", "bench.measure"),  # what a cell runs; timing and quality arithmetic
    ("bench.scenarios",),  # serving a request workload
    ("bench.serving",),  # `kvbench serve`: the OpenAI-compatible app over the engine, its thread, cache, metrics
    ("bench.cell",),  # one cell, in its own process
    ("bench.executors",),  # where cells run: spawned processes here, or Ray tasks
    ("bench.runner",),  # the grid of cells
    ("bench.config", "bench.grid"),  # a run's settings from TOML and flags; validated into the cell grid
    ("bench.commands",),  # one module per subcommand
    ("bench.cli",),  # the command line
    ("bench.api",),  # the Python API, importable as `kvbench`
]


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``packages`` (a package is its __init__.py)."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """The modules of ``known`` that one file imports."""

    def __init__(self, package: list[str], known: dict[str, Path]):
        self.package, self.known, self.targets = package, known, set()

    def add(self, name: str) -> None:
        while name and name not in self.known:
            name = name.rpartition(".")[0]
        if name:
            self.targets.add(name)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package[: len(self.package) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self.add(submodule if submodule in self.known else base)


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports."""
    known = module_files(root, packages)
    graph = {}
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        visitor = _Imports(package, known)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = visitor.targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per import cycle found by a depth-first walk, e.g. ['a', 'b', 'a']."""
    found, done, path = [], set(), []

    def walk(node: str) -> None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                found.append(path[path.index(target):] + [target])
            elif target not in done:
                walk(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            walk(node)
    return found


def layer_of(module: str, layers: list[tuple[str, ...]]) -> int | None:
    best = None
    for level, entries in enumerate(layers):
        for prefix in entries:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    return None if best is None else best[0]


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, ...]]) -> list[str]:
    """'a -> b' for every import of a module in a higher layer than the importer's."""
    out = []
    for module, targets in sorted(graph.items()):
        level = layer_of(module, layers)
        for target in sorted(targets):
            target_level = layer_of(target, layers)
            if level is not None and target_level is not None and target_level > level:
                below, above = " ".join(layers[level]), " ".join(layers[target_level])
                out.append(f"{module} -> {target} ({below} is below {above})")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_strategies_never_import_bench(graph):
    bad = [f"{m} -> {t}" for m, ts in sorted(graph.items()) if m.startswith("strategies")
           for t in sorted(ts) if t.split(".")[0] == "bench"]
    assert not bad, "strategies/ imports bench/:\n" + "\n".join(bad)


def test_every_module_has_a_layer(graph):
    loose = [m for m in graph if m not in PACKAGES and layer_of(m, LAYERS) is None]
    assert not loose, f"modules in no layer (add them to LAYERS): {', '.join(sorted(loose))}"


def test_imports_only_go_down_or_sideways(graph):
    bad = upward_imports(graph, LAYERS)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_checker_sees_cycles_upward_imports_and_lazy_ones(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from pkg.high import b  # lazy: still an edge\n")
    (pkg / "low" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.high\n")
    (pkg / "high.py").write_text("from pkg.low import a\nfrom . import low\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.low.a"] == {"pkg.high"}  # 'b' is a name in pkg.high, not a module
    assert graph["pkg.low.c"] == set()  # TYPE_CHECKING imports never run
    assert graph["pkg.high"] == {"pkg.low.a", "pkg.low"}
    assert cycles(graph) == [["pkg.high", "pkg.low.a", "pkg.high"]]
    layers = [("pkg.low",), ("pkg.high",)]
    assert upward_imports(graph, layers) == ["pkg.low.a -> pkg.high (pkg.low is below pkg.high)"]
    assert layer_of("pkg.low.a", [("pkg",), ("pkg.low",)]) == 1  # the longest prefix decides
    assert cycles({"x": {"y"}, "y": set()}) == []
