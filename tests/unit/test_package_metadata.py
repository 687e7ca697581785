"""pyproject.toml against the code: every third-party import is declared, the metadata is whole.

A library names what it imports (a missing dependency works in the development
environment and fails for users), and leaves psycopg's libpq binding to the
application: the `binary` extra is the shortcut, never a hard dependency.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]

#: Imports guarded by ``except ImportError`` with a fallback: used when present, never required.
OPTIONAL_IMPORTS = {"uvloop": "orchestra/_bench/_pgqueuer.py runs on asyncio without it"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, set[str]]:
    """A requirement's distribution name and its extras, e.g. ('pgqueuer', {'asyncpg'})."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", text)
    assert match is not None, text
    extras = {_normalize(e) for e in (match.group(2) or "").split(",") if e.strip()}
    return _normalize(match.group(1)), extras


def _declared() -> dict[str, set[str]]:
    """Every distribution the project names, in dependencies or an extra, with the extras asked."""
    declared: dict[str, set[str]] = {}
    requirements = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        requirements += extra
    for text in requirements:
        name, extras = _requirement(text)
        declared.setdefault(name, set()).update(extras)
    return declared


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported by the package, outside the standard library: module -> files."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "orchestra").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                if top != "orchestra" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """Each imported distribution is in dependencies or an extra (or an extra of one that is)."""
    declared = _declared()
    by_module = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in _third_party_imports().items():
        if module in OPTIONAL_IMPORTS:
            continue
        distributions = {_normalize(d) for d in by_module.get(module, [module])}
        via_extra = {e for extras in declared.values() for e in extras}
        if not distributions & (declared.keys() | via_extra):
            undeclared[module] = sorted(files)
    assert undeclared == {}


def test_psycopg_is_required_without_choosing_its_libpq() -> None:
    """The hard dependency is plain psycopg; `binary` and the dev extra bring the prebuilt one."""
    hard = dict(_requirement(r) for r in PROJECT["dependencies"])
    assert hard["psycopg"] == set()
    assert "psycopg-pool" in hard
    extras = PROJECT["optional-dependencies"]
    assert [_requirement(r) for r in extras["binary"]] == [("psycopg", {"binary"})]
    assert ("psycopg", {"binary"}) in [_requirement(r) for r in extras["dev"]]


def test_the_docs_extra_is_in_the_dev_extra() -> None:
    """`make test` builds the site, so the dev install carries what the docs extra needs."""
    extras = PROJECT["optional-dependencies"]
    dev = [_requirement(r) for r in extras["dev"]]
    for requirement in extras["docs"]:
        name, wanted = _requirement(requirement)
        assert any(n == name and wanted <= e for n, e in dev), requirement


def test_metadata_names_the_license_the_urls_and_the_python_under_test() -> None:
    """MIT with its file, the four project URLs, and a classifier for this interpreter."""
    assert PROJECT["license"] == "MIT"
    assert (REPO / "LICENSE").read_text("utf-8").startswith("MIT License\n")
    assert set(PROJECT["urls"]) == {"Homepage", "Documentation", "Changelog", "Issues"}
    classifiers = PROJECT["classifiers"]
    running = f"Programming Language :: Python :: {sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info[:2] != (3, 11):
        pytest.skip(f"{running} is not claimed until the project's CI runs it")
    assert running in classifiers
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", PROJECT["requires-python"])
    assert minimum is not None
    assert f"Programming Language :: Python :: {minimum[1]}.{minimum[2]}" in classifiers
