"""The imports between orchestra's modules point down the layers, and form no cycle.

Every module belongs to a layer (LAYERS below, as decision 0022 describes
them) and imports only from its own layer or the ones below; within a layer,
no chain of imports leads back to where it started. Every import counts,
wherever it stands: at module level, under ``if TYPE_CHECKING:`` and inside a
function. A cycle held apart by a local import is still a cycle of
responsibilities. Only imports of orchestra by orchestra matter.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import orchestra

PACKAGE_DIR = Path(orchestra.__file__).parent

VALUES, DATABASE, DEFINITIONS, APPLICATION, DAEMONS, FRONT_ENDS = range(1, 7)

#: Every module's layer (docs/decisions/0022-import-layers.md). A new module
#: must be added here, in the layer of what it imports and of what imports it.
LAYERS: dict[str, int] = {
    # Values and checks, no I/O.
    "orchestra.errors": VALUES,
    "orchestra.events": VALUES,
    "orchestra._event_origin": VALUES,
    "orchestra._names": VALUES,
    "orchestra._checks": VALUES,
    "orchestra._callables": VALUES,
    "orchestra._converter": VALUES,
    "orchestra._sql": VALUES,
    "orchestra.sql": VALUES,
    "orchestra._schema_names": VALUES,
    "orchestra._records": VALUES,
    "orchestra._backoff": VALUES,
    "orchestra._snooze": VALUES,
    # Database access.
    "orchestra._embedded": DATABASE,
    "orchestra._db": DATABASE,
    "orchestra._migrate": DATABASE,
    "orchestra._pools": DATABASE,
    "orchestra._database": DATABASE,
    "orchestra._ops": DATABASE,
    # Definitions, handles and the management API.
    "orchestra._results": DEFINITIONS,
    "orchestra._jobs": DEFINITIONS,
    "orchestra._defer": DEFINITIONS,
    "orchestra._pause": DEFINITIONS,
    "orchestra._definition": DEFINITIONS,
    "orchestra._workflow": DEFINITIONS,
    # The application's handle.
    "orchestra._config": APPLICATION,
    "orchestra": APPLICATION,
    # Daemons (and PACKAGE_LAYERS).
    "orchestra._daemon": DAEMONS,
    # Front ends and integrations.
    "orchestra.testing": FRONT_ENDS,
    "orchestra.handlers": FRONT_ENDS,
    "orchestra.metrics": FRONT_ENDS,
    "orchestra.otel": FRONT_ENDS,
    "orchestra.pytest_plugin": FRONT_ENDS,
    "orchestra._demo": FRONT_ENDS,
    "orchestra._schema_dump": FRONT_ENDS,
    "orchestra.dashboard": FRONT_ENDS,
    "orchestra.dashboard._app": FRONT_ENDS,
    "orchestra.dashboard._auth": FRONT_ENDS,
    "orchestra.dashboard._data": FRONT_ENDS,
    "orchestra.dashboard._openapi": FRONT_ENDS,
    "orchestra.__main__": FRONT_ENDS,
    "orchestra.cli": FRONT_ENDS,
    "orchestra.cli.__main__": FRONT_ENDS,
    "orchestra.cli._app": FRONT_ENDS,
    "orchestra.cli._bench": FRONT_ENDS,
    "orchestra.cli._daemons": FRONT_ENDS,
    "orchestra.cli._dashboard": FRONT_ENDS,
    "orchestra.cli._defer": FRONT_ENDS,
    "orchestra.cli._health": FRONT_ENDS,
    "orchestra.cli._jobs": FRONT_ENDS,
    "orchestra.cli._pause": FRONT_ENDS,
    "orchestra._bench": FRONT_ENDS,
    "orchestra._bench.__main__": FRONT_ENDS,
    "orchestra._bench._floor": FRONT_ENDS,
    "orchestra._bench._measure": FRONT_ENDS,
    "orchestra._bench._pgqueuer": FRONT_ENDS,
    "orchestra._bench._runner": FRONT_ENDS,
}

#: Packages whose modules are all in one layer, those added later included.
PACKAGE_LAYERS: dict[str, int] = {
    "orchestra._worker": DAEMONS,
    "orchestra._orchestrator": DAEMONS,
}

#: The one sanctioned upward reference: the package re-exports Worker,
#: WorkerStats and Orchestrator lazily (imported under TYPE_CHECKING for the
#: type checker, by ``__getattr__`` on first use), so that a process that only
#: defers loads no daemon code, while ``from orchestra import Worker`` works.
UPWARD_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {("orchestra", "orchestra._worker"), ("orchestra", "orchestra._orchestrator")}
)


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


def layer_of(module: str) -> int | None:
    """The layer of ``module``: its own entry, else its package's; None if it has none."""
    if module in LAYERS:
        return LAYERS[module]
    for package, layer in PACKAGE_LAYERS.items():
        if module == package or module.startswith(package + "."):
            return layer
    return None


def upward_imports(graph: dict[str, set[str]], layer: Callable[[str], int | None]) -> list[str]:
    """Every import of ``graph`` from a module to one of a higher layer, but the allowed ones."""
    found = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            below, above = layer(importer), layer(target)
            if (importer, target) in UPWARD_ALLOWED or below is None or above is None:
                continue
            if above > below:
                found.append(f"{importer} (layer {below}) imports {target} (layer {above})")
    return found


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


def test_every_module_has_a_layer() -> None:
    """A module missing from the layer table fails, until it is placed in a layer."""
    missing = sorted(name for name in package_modules() if layer_of(name) is None)
    assert not missing, (
        f"modules without a layer: {', '.join(missing)}; add each to LAYERS in "
        f"{Path(__file__).name}, in the layer decision 0022 gives it"
    )


def test_the_layer_table_names_only_modules_that_exist() -> None:
    """A module removed or renamed is removed or renamed in the table too."""
    modules = set(package_modules())
    stale = sorted(set(LAYERS) - modules)
    assert not stale, f"LAYERS names modules that do not exist: {', '.join(stale)}"
    assert all(package in modules for package in PACKAGE_LAYERS)


def test_imports_point_to_the_same_layer_or_a_lower_one() -> None:
    """No module imports one of a higher layer, but the package's lazy daemon re-export."""
    upward = upward_imports(import_graph(), layer_of)
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_the_allowed_upward_imports_are_the_lazy_daemon_re_exports() -> None:
    """The allowance is used (else it is stale) and points from the package to the daemons."""
    graph = import_graph()
    for importer, target in UPWARD_ALLOWED:
        assert target in graph[importer], (importer, target)
        assert layer_of(importer) == APPLICATION
        assert layer_of(target) == DAEMONS


def test_upward_imports_are_found() -> None:
    """Control: an import from a lower layer to a higher one is reported, the allowed one not."""
    graph = {
        "orchestra._records": {"orchestra._database"},
        "orchestra._definition": {"orchestra._records"},
        "orchestra": {"orchestra._worker"},
    }
    assert upward_imports(graph, layer_of) == [
        f"orchestra._records (layer {VALUES}) imports orchestra._database (layer {DATABASE})"
    ]


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
