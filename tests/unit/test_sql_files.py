"""The query files of orchestra/sql: each says what it holds, and every query in them is used."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path

import orchestra
from orchestra import _sql

PACKAGE = Path(orchestra.__file__).resolve().parent
QUERY_NAME_PREFIX_RE = re.compile(r"[a-z][a-z0-9_]*_")


def names_in_package() -> tuple[set[str], list[re.Pattern[str]]]:
    """Every string literal of the package's code, and the names its f-strings can build.

    A query is run as ``queries["name"]`` or by a name passed around as a
    literal; a few names are built, as ``f"manage_job_list_{order}"``. An
    f-string counts only when it starts with a name prefix (``manage_job_list_``),
    so that ``f"{x}"`` does not match every name.
    """
    literals: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
            elif isinstance(node, ast.JoinedStr) and node.values:
                first = node.values[0]
                if not (
                    isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                    and QUERY_NAME_PREFIX_RE.fullmatch(first.value)
                ):
                    continue
                patterns.append(
                    re.compile(
                        "".join(
                            re.escape(part.value)
                            if isinstance(part, ast.Constant) and isinstance(part.value, str)
                            else "[a-z0-9_]+"
                            for part in node.values
                        )
                    )
                )
    return literals, patterns


def used_by_package(name: str, literals: set[str], patterns: list[re.Pattern[str]]) -> bool:
    """Whether the package's code names the query ``name``, literally or through an f-string."""
    return name in literals or any(pattern.fullmatch(name) for pattern in patterns)


def test_every_named_query_is_used_by_the_package() -> None:
    """A query no code of the package names is dead: delete it rather than keep it in step.

    Tests do not count: a query that only tests run tests nothing the package does.
    """
    literals, patterns = names_in_package()
    unused = sorted(
        name for name in _sql.all_queries() if not used_by_package(name, literals, patterns)
    )
    assert unused == []


def test_the_usage_check_sees_built_names_and_misses_unknown_ones() -> None:
    """The check itself: a name built by an f-string counts, a name nobody writes does not."""
    literals, patterns = names_in_package()
    assert used_by_package("manage_job_list_asc", literals, patterns)
    assert used_by_package("job_claim", literals, patterns)
    assert not used_by_package("job_no_code_runs_this", literals, patterns)


def test_every_query_file_opens_with_what_it_holds() -> None:
    """Each file starts with a comment, before its first query, saying whose queries it holds."""
    for entry in resources.files("orchestra.sql").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text("utf-8")
        opening = text.split("-- name:", 1)[0]
        assert opening.startswith("-- "), entry.name
