"""One-way layering of smore_gnn and theory (docs/architecture.md), checked on the source.

Every ``import``/``from ... import`` anywhere in a file (module level, inside functions, under
``if TYPE_CHECKING:``) and every ``importlib.import_module`` / ``__import__`` call with a literal
name is an edge; an edge must go from a module's layer to a layer it may use (``MAY_IMPORT``),
and no edges may form a cycle: lazy imports and ``TYPE_CHECKING`` imports count too.
A new module must be given a layer in ``LAYERS`` before this test passes.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("smore_gnn", "theory")

# Layer -> module name patterns (fnmatch on dotted names): one line per sub-package. An exact
# name wins over a pattern; among patterns the first matching layer wins.
LAYERS: dict[str, tuple[str, ...]] = {
    "facade": ("smore_gnn",),
    "core": ("smore_gnn.nn", "smore_gnn.nn.*", "smore_gnn._version"),
    "analysis": ("smore_gnn.analysis", "smore_gnn.analysis.*"),
    "viz": ("smore_gnn.viz", "smore_gnn.viz.*"),
    "data": ("smore_gnn.data", "smore_gnn.data.*"),
    "hf": ("smore_gnn.hf", "smore_gnn.hf.*"),
    "train": ("smore_gnn.train", "smore_gnn.train.*"),
    # `python -m smore_gnn.data build` is a command: it may read a model's tokenizer.
    "cli": ("smore_gnn.cli", "smore_gnn.cli.*", "smore_gnn.data.__main__"),
    "theory": ("theory", "theory.*"),
}

# Layer -> the layers it may import (itself included). Read it bottom-up:
# core <- analysis <- viz; core <- hf <- train <- cli; data <- train; theory -> core.
MAY_IMPORT: dict[str, set[str]] = {
    "core": {"core"},
    "analysis": {"core", "analysis"},
    "viz": {"core", "analysis", "viz"},
    "data": {"data"},
    "hf": {"core", "analysis", "hf"},
    "train": {"core", "analysis", "data", "hf", "train"},
    "cli": {"core", "analysis", "viz", "data", "hf", "train", "cli"},
    # The facade re-exports the adapter and, on first use, the Hugging Face names.
    "facade": {"core", "data", "hf", "train", "facade"},
    "theory": {"facade", "core", "analysis", "viz", "theory"},
}

# What the core may import besides the standard library (torch_scatter: the optional kernel).
CORE_DEPENDENCIES = {"torch", "torch_geometric", "torch_scatter"}

# Known violations whose owner has not fixed them yet: (importer, imported) -> owner and why.
# Every entry must still occur (test_allow_list_is_current), so a fix forces its removal.
ALLOWED: dict[tuple[str, str], str] = {}

Edge = tuple[str, str, int, bool]  # (importer, imported, line, runtime: not under TYPE_CHECKING)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    for layer, patterns in LAYERS.items():
        if module in patterns:
            return layer
    for layer, patterns in LAYERS.items():
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return layer
    return None


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in; None outside our packages."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, source: str, is_package: bool, known: set[str]):
    """``(edges, dynamic)``: imports of our packages, and importlib calls with a computed name."""
    edges: list[Edge] = []
    dynamic: list[tuple[str, int]] = []
    base = module.split(".") if is_package else module.split(".")[:-1]

    def add(name: str, line: int, runtime: bool) -> None:
        target = _resolve(name, known)
        if target is not None and target != module:
            edges.append((module, target, line, runtime))

    def visit(node: ast.AST, runtime: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runtime)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, runtime)
        elif isinstance(node, ast.ImportFrom):
            anchor = base[: len(base) - node.level + 1] if node.level else []
            parent = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import sub` imports the module pkg.sub
                add(
                    f"{parent}.{alias.name}" if f"{parent}.{alias.name}" in known else parent,
                    node.lineno,
                    runtime,
                )
        elif isinstance(node, ast.Call):
            func = node.func
            name = getattr(func, "attr", None) or getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    add(arg.value, node.lineno, runtime)
                else:
                    dynamic.append((module, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, runtime)

    visit(ast.parse(source), True)
    return edges, dynamic


def scan() -> tuple[dict[str, Path], list[Edge], list[tuple[str, int]]]:
    files = {
        module_name(p): p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }
    known = set(files)
    edges, dynamic = [], []
    for module, path in files.items():
        e, d = imports_of(module, path.read_text(), path.name == "__init__.py", known)
        edges += e
        dynamic += d
    return files, edges, dynamic


FILES, EDGES, DYNAMIC = scan()


def test_every_module_has_a_layer():
    missing = sorted(m for m in FILES if layer_of(m) is None)
    assert not missing, f"give these modules a layer in LAYERS (tests/test_layering.py): {missing}"


def test_imports_follow_the_layers():
    bad = []
    for importer, imported, line, _ in EDGES:
        a, b = layer_of(importer), layer_of(imported)
        if a and b and b not in MAY_IMPORT[a] and (importer, imported) not in ALLOWED:
            bad.append(
                f"{FILES[importer].relative_to(ROOT)}:{line} {importer} ({a}) -> {imported} ({b})"
            )
    assert not bad, "imports against the layering (docs/architecture.md):\n" + "\n".join(bad)


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative enough)."""
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in edges:
        if (a, b) not in ALLOWED:
            graph.setdefault(a, set()).add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycles_lazy_or_type_only():
    found = cycles(EDGES)
    where = [
        f"{FILES[a].relative_to(ROOT)}:{line} {a} -> {b}"
        for component in found
        for a, b, line, _ in EDGES
        if a in component and b in component
    ]
    assert not found, (
        f"import cycles (lazy and type-only imports included): {found}\n" + "\n".join(where)
    )


def test_no_computed_imports():
    assert not DYNAMIC, f"importlib calls with a computed module name cannot be checked: {DYNAMIC}"


def test_allow_list_is_current():
    seen = {(a, b) for a, b, _, _ in EDGES}
    stale = sorted(set(ALLOWED) - seen)
    assert not stale, f"remove these fixed entries from ALLOWED: {stale}"


def top_level_imports(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source`` (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_needs_only_torch_and_pyg():
    """``pip install smore-gnn`` without extras must be enough for ``SMoRELinear``."""
    allowed = CORE_DEPENDENCIES | set(sys.stdlib_module_names) | set(PACKAGES)
    bad = {
        module: sorted(top_level_imports(path.read_text()) - allowed)
        for module, path in FILES.items()
        if layer_of(module) == "core"
    }
    bad = {m: names for m, names in bad.items() if names}
    assert not bad, f"core modules import packages outside torch + PyG: {bad}"
    assert top_level_imports("import numpy.linalg\nfrom yaml import safe_load\n") == {
        "numpy",
        "yaml",
    }


@pytest.mark.parametrize("type_only", [False, True])
def test_the_checker_sees_lazy_relative_and_importlib_imports(type_only):
    known = {
        "smore_gnn",
        "smore_gnn.nn.config",
        "smore_gnn.hf.model",
        "smore_gnn.viz",
        "theory",
        "theory.count",
        "smore_gnn.analysis",
        "smore_gnn.analysis.routing",
    }
    source = (
        "from typing import TYPE_CHECKING\nimport importlib\nimport torch\n"
        "if TYPE_CHECKING:\n    from smore_gnn.hf.model import SMoREModel\n"
        "def f():\n    from ..nn.config import SMoREConfig\n"
        "    return importlib.import_module('theory.count')\n"
        "def g(name):\n    return importlib.import_module(name)\n"
        "from . import routing\n"
    )
    edges, dynamic = imports_of("smore_gnn.analysis", source, True, known)
    found = {(b, runtime) for _, b, _, runtime in edges}
    assert found == {
        ("smore_gnn.hf.model", False),
        ("smore_gnn.nn.config", True),
        ("theory.count", True),
        ("smore_gnn.analysis.routing", True),
    }
    assert dynamic == [("smore_gnn.analysis", 10)]
    # a cycle closed by a type-only import is still a cycle
    loop = [("a", "b", 1, True), ("b", "c", 1, True), ("c", "a", 1, not type_only)]
    assert cycles(loop) == [["a", "b", "c"]]
    assert cycles(loop[:2]) == []
