"""The imports between orchestra's modules point one way: no module imports itself back.

Every import counts, wherever it stands: at module level, under ``if
TYPE_CHECKING:`` and inside a function. A cycle held apart by a local import
is still a cycle of responsibilities, and the layering (docs/decisions) says
which way the arrows go. Only imports of orchestra by orchestra matter.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import orchestra

PACKAGE_DIR = Path(orchestra.__file__).parent


def module_name(path: Path) -> str:
    """The dotted name of the module at ``path`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the orchestra package, by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported(tree: ast.AST, importer: str, is_package: bool, modules: set[str]) -> Iterator[str]:
    """The orchestra modules that the module ``importer`` imports, anywhere in its body.

    ``from orchestra import X`` names the submodule ``orchestra.X`` when there
    is one (the package's ``__init__`` is then not what is needed), else the
    package itself.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = importer.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    yield submodule
                elif base in modules:
                    yield base


def import_graph() -> dict[str, set[str]]:
    """Each orchestra module and the orchestra modules it imports."""
    paths = package_modules()
    names = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set(imported(tree, name, is_package, names)) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_orchestra_modules_import_each_other_without_a_cycle() -> None:
    """No chain of imports between orchestra's modules leads back to where it started."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_graph_sees_every_kind_of_import() -> None:
    """Type-checking and function-level imports are edges, and submodules are told from names."""
    graph = import_graph()
    # `from orchestra import events` (a submodule) is an edge to orchestra.events.
    assert "orchestra.events" in graph["orchestra"]
    # Under `if TYPE_CHECKING:` in the package's __init__.
    assert "orchestra._worker" in graph["orchestra"]
    # Inside a function of the CLI.
    assert "orchestra._orchestrator" in graph["orchestra.cli._daemons"]


def test_find_cycle_reports_the_cycle() -> None:
    """Control: a cycle in a graph is found and printed from its start back to it."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_dashboard_and_orchestrator_share_the_lease_name_from_below() -> None:
    """The dashboard reads the leader's lease without importing the orchestrator's internals."""
    graph = import_graph()
    dashboard = {name for name in graph if name.startswith("orchestra.dashboard")}
    for name in dashboard:
        assert "orchestra._orchestrator._leader" not in graph[name], name
