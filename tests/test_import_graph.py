"""The modules of the model library import each other without a cycle (ARCHITECTURE.md: layers).

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` statement counts,
at module level and inside functions (a lazy import is still a dependency). ``hhn.x.y`` and relative
imports are resolved to the module files under ``src_model/hhn``; a package's ``__init__`` is its own
node, and ``from package import name`` points at ``package.name`` when that is a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src_model"
PACKAGE = "hhn"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__``)."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that one import statement in ``module`` imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    found = set()
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        found.add(submodule if submodule in known else base)
    return found & known


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source."""
    files = module_files()
    known = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[module] = set().union(*(_targets(node, module, is_package, known) for node in ast.walk(tree)))
        graph[module].discard(module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_lazy_relative_and_package_imports():
    graph = import_graph()
    assert "hhn" in graph and "hhn.priors" in graph
    assert "hhn.priors.base" in graph["hhn.priors"]  # the package __init__ is a node of its own
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_and_function_level_imports_are_resolved():
    tree = ast.parse("from . import base\nfrom .features import image_key\n"
                     "def f():\n    import hhn.config\n    from ..errors import UserError\n")
    known = {"hhn.priors.base", "hhn.priors.features", "hhn.config", "hhn.errors", "hhn.priors"}
    found = set().union(*(_targets(n, "hhn.priors.coseg", False, known) for n in ast.walk(tree)))
    assert found == {"hhn.priors.base", "hhn.priors.features", "hhn.config", "hhn.errors"}


def test_model_library_import_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in src_model/hhn: " + " -> ".join(cycle)
