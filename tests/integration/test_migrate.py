"""Schema migrations against a real PostgreSQL: creation, idempotence, concurrency, checks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql

from orchestra import Config, ConfigurationError, SchemaNotReadyError, _migrate
from orchestra.testing import wait_until

REPO = Path(__file__).resolve().parents[2]

TABLES = {
    "job_definition",
    "job",
    "job_dependency",
    "job_attempt",
    "job_history",
    "worker",
    "leader",
    "schema_version",
    "channel_pause",
}

#: A child process that opens its pool, waits at a barrier (a shared advisory lock
#: the parent holds exclusively), migrates, and prints the migrations it applied.
MIGRATE_CHILD = """
import json, sys
import psycopg
from orchestra import Config

dsn, schema, key = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = Config(dsn, schema=schema)
with config.connection() as conn:
    conn.execute("SELECT 1")
with psycopg.connect(dsn, autocommit=True) as gate:
    gate.execute("SELECT pg_advisory_lock_shared(%s::bigint)", (key,))
    applied = config.prepare_schema()
config.close()
print(json.dumps(applied))
"""


def all_migrations() -> list[str]:
    """The names prepare_schema reports for every shipped migration."""
    return [f"{m.version:04d}_{m.name}" for m in _migrate.migrations()]


def tables_in(db: psycopg.Connection[Any], schema: str) -> set[str]:
    """The tables of ``schema``, partitioned ones by their parent's name only."""
    rows = db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
        [schema],
    ).fetchall()
    return {str(r[0]) for r in rows}


def schema_exists(db: psycopg.Connection[Any], schema: str) -> bool:
    """Whether pg_namespace has a schema of exactly this name."""
    row = db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
    assert row is not None
    return int(row[0]) > 0


def version_rows(db: psycopg.Connection[Any], schema: str) -> list[tuple[int, str]]:
    """The rows of ``schema.schema_version``, by version."""
    query = sql.SQL("SELECT version, name FROM {} ORDER BY version").format(
        sql.Identifier(schema, "schema_version")
    )
    return [(int(r[0]), str(r[1])) for r in db.execute(query).fetchall()]


def public_objects(db: psycopg.Connection[Any]) -> set[tuple[str, str]]:
    """Every relation and type in the public schema, as (kind, name)."""
    rows = db.execute(
        "SELECT 'rel', c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public'"
        " UNION ALL SELECT 'type', t.typname FROM pg_type t"
        " JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public'"
    ).fetchall()
    return {(str(r[0]), str(r[1])) for r in rows}


@pytest.fixture
def fresh(test_dsn: str, schema: str) -> Iterator[Config]:
    """A Config on a schema that does not exist yet (dropped afterwards by ``schema``)."""
    cfg = Config(test_dsn, schema=schema)
    yield cfg
    cfg.close()


class TestPrepareSchema:
    def test_fresh_schema_gets_every_table(
        self, fresh: Config, db: psycopg.Connection[Any]
    ) -> None:
        """prepare_schema on a fresh schema creates exactly the queue tables."""
        assert not schema_exists(db, fresh.schema)
        applied = fresh.prepare_schema()
        assert applied == all_migrations()
        assert tables_in(db, fresh.schema) == TABLES

    def test_second_prepare_is_a_no_op(self, fresh: Config, db: psycopg.Connection[Any]) -> None:
        """Preparing twice succeeds, the second time applies nothing and records nothing."""
        assert fresh.prepare_schema() == all_migrations()
        assert fresh.prepare_schema() == []
        assert tables_in(db, fresh.schema) == TABLES
        expected = [(m.version, m.name) for m in _migrate.migrations()]
        assert version_rows(db, fresh.schema) == expected

    def test_second_config_on_migrated_schema_applies_nothing(
        self, fresh: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """A second Config preparing an already migrated schema applies nothing."""
        fresh.prepare_schema()
        with Config(test_dsn, schema=fresh.schema) as other:
            assert other.prepare_schema() == []
        assert len(version_rows(db, fresh.schema)) == len(_migrate.migrations())

    def test_existing_empty_schema_is_migrated(
        self, fresh: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A schema the user created beforehand, still empty, is migrated in place."""
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(fresh.schema)))
        assert fresh.prepare_schema() == all_migrations()
        assert tables_in(db, fresh.schema) == TABLES

    def test_migration_touches_only_the_configured_schema(
        self, fresh: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Every object is created in the configured schema and nothing in public."""
        before = public_objects(db)
        fresh.prepare_schema()
        assert public_objects(db) == before
        row = db.execute(
            "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE t.typname = 'job_status' AND n.nspname = %s",
            [fresh.schema],
        ).fetchone()
        assert row is not None


class TestConcurrentMigration:
    def test_two_processes_migrating_at_once_both_succeed(
        self, test_dsn: str, schema: str, db: psycopg.Connection[Any]
    ) -> None:
        """Two processes released together on a fresh schema both succeed; one applies it all."""
        key = random.randrange(1, 2**31)
        gate = psycopg.connect(test_dsn, autocommit=True)
        procs: list[subprocess.Popen[str]] = []
        try:
            gate.execute("SELECT pg_advisory_lock(%s::bigint)", (key,))
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", MIGRATE_CHILD, test_dsn, schema, str(key)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=REPO,
                )
                for _ in range(2)
            ]

            def both_at_barrier() -> bool:
                if any(p.poll() is not None for p in procs):
                    raise AssertionError("a migrating child exited before the barrier")
                row = db.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND classid::bigint = 0 AND objid::bigint = %s AND objsubid = 1",
                    [key],
                ).fetchone()
                return row is not None and int(row[0]) == 2

            wait_until(both_at_barrier, timeout=60, message="children never reached the barrier")
            assert not schema_exists(db, schema)
            gate.execute("SELECT pg_advisory_unlock(%s::bigint)", (key,))
            outputs = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            gate.close()
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err
        applied = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outputs), key=len)
        assert applied == [[], all_migrations()]
        expected = [(m.version, m.name) for m in _migrate.migrations()]
        assert version_rows(db, schema) == expected
        assert tables_in(db, schema) == TABLES


class TestVersionCheck:
    def test_current_version_zero_before_and_required_after(
        self, fresh: Config, db: psycopg.Connection[Any]
    ) -> None:
        """current_version is 0 for a missing schema and the required version after migrating."""
        assert _migrate.current_version(db, fresh.schema) == 0
        fresh.prepare_schema()
        assert _migrate.current_version(db, fresh.schema) == _migrate.required_version()

    def test_current_version_zero_for_schema_without_version_table(
        self, fresh: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A schema that exists but holds no schema_version table is at version 0."""
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(fresh.schema)))
        assert _migrate.current_version(db, fresh.schema) == 0

    def test_check_schema_raises_before_migration(self, fresh: Config) -> None:
        """check_schema on an unmigrated schema raises SchemaNotReadyError naming `orchestra migrate`."""
        with pytest.raises(SchemaNotReadyError, match="orchestra migrate") as info:
            fresh.check_schema()
        assert info.value.schema == fresh.schema
        assert info.value.current == 0
        assert info.value.required == _migrate.required_version()

    def test_check_schema_of_a_missing_schema_says_it_does_not_exist(self, fresh: Config) -> None:
        """No schema of that name: the error says so, and how to create it, not "version 0"."""
        with pytest.raises(SchemaNotReadyError) as info:
            fresh.check_schema()
        assert info.value.exists is False
        assert str(info.value).startswith(f"schema {fresh.schema!r} does not exist")
        assert f"orchestra migrate --schema {fresh.schema}" in str(info.value)

    def test_check_schema_of_an_empty_schema_says_it_is_at_version_0(
        self, fresh: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A schema that exists but was never migrated is at version 0: migrate it."""
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(fresh.schema)))
        with pytest.raises(SchemaNotReadyError) as info:
            fresh.check_schema()
        assert info.value.exists is True
        assert f"schema {fresh.schema!r} is at version 0" in str(info.value)
        assert _migrate.readiness_error(db, fresh.schema) is not None
        fresh.prepare_schema()
        assert _migrate.readiness_error(db, fresh.schema) is None

    def test_check_schema_passes_after_migration(self, fresh: Config) -> None:
        """check_schema is silent once the schema is migrated."""
        fresh.prepare_schema()
        fresh.check_schema()

    def test_check_schema_accepts_a_newer_schema(
        self, fresh: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A schema migrated further than this version needs passes the check (rolling upgrades)."""
        fresh.prepare_schema()
        db.execute(
            sql.SQL("INSERT INTO {} (version, name) VALUES (999, 'from_the_future')").format(
                sql.Identifier(fresh.schema, "schema_version")
            )
        )
        assert _migrate.current_version(db, fresh.schema) == 999
        fresh.check_schema()


INVALID_SCHEMAS = [
    "Upper",
    "1starts_with_digit",
    "has-dash",
    "has space",
    'quote"; DROP SCHEMA public CASCADE; --',
    "pg_reserved",
    "x" * 64,
    "",
]


class TestSchemaName:
    @pytest.mark.parametrize("name", INVALID_SCHEMAS)
    def test_invalid_schema_name_rejected_by_config(
        self, name: str, db: psycopg.Connection[Any]
    ) -> None:
        """Config refuses an unsafe schema name with ConfigurationError and creates nothing."""
        with pytest.raises(ConfigurationError) as info:
            Config("postgresql://unused", schema=name)
        assert info.value.argument == "schema"
        assert not schema_exists(db, name)
        assert not schema_exists(db, name.lower())

    @pytest.mark.parametrize("name", INVALID_SCHEMAS)
    def test_invalid_schema_name_rejected_by_migrate(
        self, name: str, db: psycopg.Connection[Any]
    ) -> None:
        """The migrator itself refuses an unsafe schema name before running any SQL."""
        with pytest.raises(ConfigurationError):
            _migrate.migrate(db, name)
        with pytest.raises(ConfigurationError):
            _migrate.current_version(db, name)
        assert not schema_exists(db, name)
        assert not schema_exists(db, name.lower())
        assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    def test_non_string_schema_rejected(self) -> None:
        """A schema that is not a string is a ConfigurationError, not a TypeError."""
        with pytest.raises(ConfigurationError):
            Config("postgresql://unused", schema=cast(Any, 42))
