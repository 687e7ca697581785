"""schemas/schema.sql, the whole current schema generated from the migrations (``make schema``).

Both checks dump with ``pg_dump --schema-only`` of the server's major version
(found through pg_config, the distribution's directories, the pgserver
package or PATH) and skip only when no such pg_dump exists.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestra import _migrate, _schema_dump, _sql


@pytest.fixture
def server_major(test_dsn: str) -> int:
    """The major version of the test server."""
    with psycopg.connect(test_dsn) as conn:
        return _schema_dump.server_major(conn)


@pytest.fixture
def pg_dump(server_major: int) -> Path:
    """A pg_dump of the test server's major version."""
    found = _schema_dump.find_pg_dump(server_major)
    if found is None:
        pytest.skip(
            f"no pg_dump of PostgreSQL {server_major} on this machine (pg_config --bindir, "
            f"/usr/lib/postgresql/{server_major}/bin, the pgserver package and PATH were tried)"
        )
    return found


@pytest.fixture
def file_schema(test_dsn: str, schema: str) -> Iterator[str]:
    """A second schema of the test's own, built from schema.sql; dropped afterwards."""
    name = f"{schema}_file"
    yield name
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        conn.execute(_sql.render("DROP SCHEMA IF EXISTS {schema} CASCADE", name))


def test_schema_file_builds_the_schema_the_migrations_build(
    test_dsn: str, schema: str, file_schema: str, pg_dump: Path
) -> None:
    """A schema made by running schema.sql dumps exactly as one made by the migrations."""
    from_migrations = _schema_dump.migrated_schema(test_dsn, schema, pg_dump)
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        conn.execute(_sql.render(_migrate.schema_file().read_text("utf-8"), file_schema))
    from_file = _schema_dump.normalise(
        _schema_dump.dump(test_dsn, file_schema, pg_dump), file_schema
    )
    assert from_file == from_migrations


def test_schema_file_is_up_to_date(
    test_dsn: str, schema: str, pg_dump: Path, server_major: int
) -> None:
    """Regenerating schema.sql from the migrations gives the committed text (run `make schema`)."""
    committed = _migrate.schema_file().read_text("utf-8")
    generated_with = _schema_dump.generated_major(committed)
    assert generated_with is not None, "schema.sql does not say which PostgreSQL made it"
    expected = _schema_dump.header(generated_with) + _schema_dump.migrated_schema(
        test_dsn, schema, pg_dump
    )
    if committed != expected and generated_with != server_major:
        pytest.skip(
            f"schema.sql was generated with PostgreSQL {generated_with} and this server is "
            f"{server_major}, whose pg_dump may word the same schema differently; "
            "test_schema_file_builds_the_schema_the_migrations_build still compares them"
        )
    stale = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            "schemas/schema.sql",
            "generated from the migrations",
        )
    )
    assert committed == expected, f"schemas/schema.sql is out of date: run `make schema`\n{stale}"
