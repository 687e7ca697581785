"""Apply the numbered migrations of ``schemas/`` to a queue schema.

Migrations are forward-only SQL files named ``NNNN_slug.sql``. All pending
ones run in one transaction that first takes a transaction-scoped advisory lock
named after the schema, so two processes migrating at once serialize: the
second finds the work done and applies nothing. Each applied file is recorded
in ``<schema>.schema_version``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import psycopg

from orchestra import _sql
from orchestra._checks import is_int
from orchestra.errors import ConfigurationError, SchemaNotReadyError

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@attrs.frozen
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str


def _schemas_dir() -> Path:
    # In a wheel the files sit in orchestra/schemas (hatch force-include); in a
    # source checkout or editable install they sit in the top-level schemas/.
    packaged = resources.files("orchestra") / "schemas"
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parent.parent / "schemas"
    if source.is_dir():
        return source
    raise FileNotFoundError("orchestra's schemas/ directory is missing from this installation")


def schema_file() -> Path:
    """``schema.sql``: the whole current schema, generated from the migrations (``make schema``).

    For reading only: :func:`migrate` applies the numbered migrations, on a
    new schema as on an old one, so that there is one way a schema is built.
    """
    return _schemas_dir() / "schema.sql"


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this version, in order."""
    found: list[Migration] = []
    for path in sorted(_schemas_dir().iterdir()):
        match = _FILE_RE.match(path.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text("utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return tuple(found)


def required_version() -> int:
    """The schema version this orchestra needs."""
    return migrations()[-1].version


def current_version(conn: psycopg.Connection[Any], schema: str) -> int:
    """The version recorded in ``schema`` (0 when nothing is installed)."""
    queries = _sql.Queries(schema)  # validates the name before it is quoted below
    row = conn.execute(
        queries["schema_version_table_exists"], {"version_table": f'"{schema}".schema_version'}
    ).fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute(queries["schema_version_max"]).fetchone()
    return int(row[0]) if row else 0


def pending(done: Collection[int], up_to: int | None = None) -> list[Migration]:
    """The shipped migrations not in ``done``, in order, up to version ``up_to`` (None: all).

    Raises ConfigurationError when ``up_to`` is not the version of a shipped
    migration.
    """
    last = required_version()
    if up_to is not None and (not is_int(up_to) or not 1 <= up_to <= last):
        raise ConfigurationError(
            "up_to", f"must be None or a version from 1 to {last}, got {up_to!r}"
        )
    return [
        m for m in migrations() if m.version not in done and (up_to is None or m.version <= up_to)
    ]


def migrate(
    conn: psycopg.Connection[Any], schema: str, *, up_to: int | None = None
) -> list[Migration]:
    """Apply the pending migrations to ``schema``; return those applied (maybe none).

    ``up_to`` stops after that version (tests of a migration build the layout
    it starts from); None applies every shipped migration.
    """
    queries = _sql.Queries(schema)
    pending((), up_to)  # refuse a bad up_to before any statement
    applied_now: list[Migration] = []
    with conn.transaction():
        conn.execute(queries["migrate_lock"], {"lock_name": f"orchestra.migrate.{schema}"})
        exists = conn.execute(queries["schema_exists"], {"schema": schema}).fetchone()
        if not (exists and exists[0]):
            conn.execute(queries["schema_create"])
        conn.execute(queries["schema_version_create"])
        done = {row[0] for row in conn.execute(queries["schema_version_list"])}
        for migration in pending(done, up_to):
            conn.execute(_sql.render(migration.sql, schema))
            conn.execute(
                queries["schema_version_insert"],
                {"version": migration.version, "name": migration.name},
            )
            applied_now.append(migration)
    return applied_now


def readiness_error(conn: psycopg.Connection[Any], schema: str) -> SchemaNotReadyError | None:
    """Why ``schema`` cannot be used by this version (None when it can).

    A schema that does not exist at all is most often a misspelt name, so its
    error says so rather than that it is at version 0.
    """
    current = current_version(conn, schema)
    if current >= required_version():
        return None
    exists = True
    if current == 0:
        row = conn.execute(_sql.Queries(schema)["schema_exists"], {"schema": schema}).fetchone()
        exists = bool(row and row[0])
    return SchemaNotReadyError(schema, current, required_version(), exists=exists)


def check(conn: psycopg.Connection[Any], schema: str) -> None:
    """Raise SchemaNotReadyError unless ``schema`` has every migration this version needs.

    A newer schema is accepted: migrations are additive, so older daemons keep
    working during a rolling upgrade.
    """
    error = readiness_error(conn, schema)
    if error is not None:
        raise error
