"""Named SQL queries, loaded from ``orchestra/sql/*.sql``.

File format::

    -- name: job_claim
    -- One or more lines that say what the query does.
    SELECT ...;

A query runs from its ``-- name:`` line to the next one. ``{schema}`` is the
only interpolated identifier: it is validated here and quoted with
:class:`psycopg.sql.Identifier`; literal braces are written doubled. Every
other value is a bind parameter (``%(name)s``). Rendered queries are cached per
schema as bytes, so the hot path does no string work at all.

Names are one namespace across the files, so which file holds a query matters
to readers only. The files group queries by the code that runs them:
``producer.sql`` (defer, a job handle's reads), ``worker.sql`` (claims and
finishes), ``daemon.sql`` (what every daemon runs about itself),
``orchestrator.sql`` (leader lease, maintenance services), ``manage.sql`` (the
job management API), ``monitoring.sql`` (dashboard, health probes, metrics
gauges), ``migrate.sql`` and ``testing.sql``.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from psycopg import sql

from orchestra.errors import ConfigurationError

SCHEMA_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NAME_LINE_RE = re.compile(r"^-- name: ([a-z][a-z0-9_]*)\s*$", re.MULTILINE)


def validate_schema_name(schema: object) -> str:
    """Return ``schema`` if it is a safe schema name, else raise ConfigurationError."""
    if not isinstance(schema, str) or not SCHEMA_NAME_RE.fullmatch(schema):
        raise ConfigurationError(
            "schema",
            f"{schema!r} is not a valid schema name: use 1 to 63 characters of "
            "lower-case letters, digits and underscores, not starting with a digit",
        )
    if schema.startswith("pg_"):
        raise ConfigurationError("schema", f"{schema!r}: names starting with pg_ are reserved")
    return schema


def parse_queries(text: str, *, source: str = "<string>") -> dict[str, str]:
    """Split a file of named queries into ``{name: sql}``."""
    matches = list(_NAME_LINE_RE.finditer(text))
    if not matches and text.strip():
        raise ValueError(f"{source}: no '-- name:' line found")
    queries: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end]
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        statement = "\n".join(lines).strip().rstrip(";").strip()
        name = match.group(1)
        if not statement:
            raise ValueError(f"{source}: query {name!r} is empty")
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        queries[name] = statement
    return queries


@functools.cache
def all_queries() -> dict[str, str]:
    """Every named query of the package, by name."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files("orchestra.sql").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, statement in parse_queries(entry.read_text("utf-8"), source=entry.name).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined in more than one file")
            found[name] = statement
    return found


def render(template: str, schema: str) -> bytes:
    """Return ``template`` with ``{schema}`` replaced by the quoted schema name."""
    composed = sql.SQL(template).format(schema=sql.Identifier(validate_schema_name(schema)))
    return composed.as_bytes(None)


class Queries:
    """The package's queries rendered for one schema; attribute access by name."""

    def __init__(self, schema: str) -> None:
        self.schema = validate_schema_name(schema)
        self._rendered: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        try:
            return self._rendered[name]
        except KeyError:
            pass
        try:
            template = all_queries()[name]
        except KeyError:
            raise KeyError(f"no SQL query named {name!r}") from None
        rendered = self._rendered[name] = render(template, self.schema)
        return rendered
