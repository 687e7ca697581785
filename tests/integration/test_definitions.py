"""Job definitions against a real PostgreSQL: upsert, clamping, attempts, re-creation."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from orchestra import Config, JobDefinition, OrchestraError
from orchestra._definition import DEFINITION_REFRESH_S

SETTINGS = (
    "channel",
    "num_attempts",
    "backoff",
    "backoff_base_ms",
    "backoff_max_ms",
    "priority",
    "repeat_interval_ms",
    "cron",
    "release_interval_ms",
    "max_concurrency",
    "lock_interval_ms",
    "timeout_interval_ms",
)


def noop(payload: object) -> None:
    """A job function that does nothing."""


def definition_row(db: psycopg.Connection[Any], config: Config, name: str) -> dict[str, Any]:
    """The job_definition row called ``name``; fails the test if it is missing."""
    query = sql.SQL("SELECT * FROM {} WHERE name = %s").format(
        sql.Identifier(config.schema, "job_definition")
    )
    with db.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, [name]).fetchone()
    assert row is not None, f"no job_definition row {name!r}"
    return row


def count(db: psycopg.Connection[Any], config: Config, table: str) -> int:
    """The number of rows of ``table`` in the config's schema."""
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(config.schema, table))
    row = db.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def db_now(db: psycopg.Connection[Any]) -> dt.datetime:
    """The database clock."""
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    value = row[0]
    assert isinstance(value, dt.datetime)
    return value


def upsert(definition: JobDefinition[Any]) -> None:
    """Write the definition's row through its own Config."""
    with definition.config.connection() as conn:
        definition.upsert(conn)


def age_cache(definition: JobDefinition[Any]) -> None:
    """Pretend the definition was last written longer ago than DEFINITION_REFRESH_S."""
    assert definition._ensured_at is not None
    definition._ensured_at = time.monotonic() - DEFINITION_REFRESH_S - 1


class TestUpsert:
    @pytest.mark.parametrize("second_first", [False, True])
    def test_last_writer_wins_across_configs(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any], second_first: bool
    ) -> None:
        """Two same-named definitions from two Configs leave one row holding the last writer's settings."""
        with Config(test_dsn, schema=config.schema) as other:
            first: JobDefinition[Any] = JobDefinition(
                config,
                name="report",
                job_function=noop,
                channel="alpha",
                num_attempts=2,
                backoff="fixed",
                priority=3,
                lock_interval_ms=1_000,
                timeout_interval_ms=0,
                release_interval_ms=10,
                max_concurrency=2,
                cron="*/5 * * * *",
            )
            second: JobDefinition[Any] = JobDefinition(
                other,
                name="report",
                job_function=noop,
                channel="beta",
                num_attempts=7,
                backoff="none",
                priority=-4,
                lock_interval_ms=90_000,
                timeout_interval_ms=dt.timedelta(hours=1),
                release_interval_ms=250,
                repeat_interval_ms=60_000,
            )
            order = [second, first] if second_first else [first, second]
            for definition in order:
                upsert(definition)
            last = order[-1]
            assert count(db, config, "job_definition") == 1
            row = definition_row(db, config, "report")
            params = last.row_params()
            assert {k: row[k] for k in SETTINGS} == {k: params[k] for k in SETTINGS}
            assert row["cron"] == last.cron

    def test_upsert_refreshes_heartbeat_and_keeps_daemon_timestamps(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Re-upserting sets last_heartbeat_at to now and keeps last_repeated_at and last_released_at."""
        definition: JobDefinition[Any] = JobDefinition(config, name="tick", job_function=noop)
        upsert(definition)
        row = definition_row(db, config, "tick")
        assert abs(db_now(db) - row["last_heartbeat_at"]) < dt.timedelta(minutes=1)
        repeated = dt.datetime(2020, 1, 1, 1, 2, 3, tzinfo=dt.UTC)
        released = dt.datetime(2020, 1, 2, 4, 5, 6, tzinfo=dt.UTC)
        db.execute(
            sql.SQL(
                "UPDATE {} SET last_repeated_at = %s, last_released_at = %s,"
                " last_heartbeat_at = '2000-01-01T00:00:00Z' WHERE name = 'tick'"
            ).format(sql.Identifier(config.schema, "job_definition")),
            [repeated, released],
        )
        upsert(definition)
        row = definition_row(db, config, "tick")
        assert abs(db_now(db) - row["last_heartbeat_at"]) < dt.timedelta(minutes=1)
        assert row["last_repeated_at"] == repeated
        assert row["last_released_at"] == released


class TestClamping:
    def test_upsert_query_clamps_raw_values(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """definition_upsert fed out-of-range values stores num_attempts 1 and intervals 0."""
        definition: JobDefinition[Any] = JobDefinition(config, name="raw", job_function=noop)
        params = definition.row_params() | {
            "num_attempts": 0,
            "release_interval_ms": -5,
            "lock_interval_ms": -1,
            "timeout_interval_ms": -100,
            "repeat_interval_ms": -10,
            "backoff_base_ms": -1,
            "backoff_max_ms": -2,
        }
        returned = db.execute(config.queries["definition_upsert"], params).fetchone()
        assert returned == (1,)
        row = definition_row(db, config, "raw")
        assert row["num_attempts"] == 1
        for column in (
            "release_interval_ms",
            "lock_interval_ms",
            "timeout_interval_ms",
            "repeat_interval_ms",
            "backoff_base_ms",
            "backoff_max_ms",
        ):
            assert row[column] == 0, column

    def test_upsert_query_clamps_negative_attempts_on_update(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A raw upsert over an existing row clamps too: num_attempts -3 becomes 1."""
        definition: JobDefinition[Any] = JobDefinition(
            config, name="raw", job_function=noop, num_attempts=5
        )
        upsert(definition)
        params = definition.row_params() | {"num_attempts": -3, "lock_interval_ms": -9}
        db.execute(config.queries["definition_upsert"], params)
        row = definition_row(db, config, "raw")
        assert (row["num_attempts"], row["lock_interval_ms"]) == (1, 0)

    def test_upsert_query_keeps_valid_values(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Values already in range are stored unchanged by definition_upsert."""
        definition: JobDefinition[Any] = JobDefinition(
            config,
            name="fine",
            job_function=noop,
            num_attempts=4,
            release_interval_ms=1_500,
            lock_interval_ms=2_000,
            timeout_interval_ms=3_000,
            repeat_interval_ms=4_000,
        )
        upsert(definition)
        row = definition_row(db, config, "fine")
        assert {k: row[k] for k in SETTINGS} == {k: definition.row_params()[k] for k in SETTINGS}

    @pytest.mark.parametrize("path", ["api", "raw_query"])
    def test_unset_repeat_interval_is_stored_as_null(
        self, config: Config, db: psycopg.Connection[Any], path: str
    ) -> None:
        """A definition without a repeat interval is stored with repeat_interval_ms NULL."""
        definition: JobDefinition[Any] = JobDefinition(config, name="once", job_function=noop)
        assert definition.repeat_interval_ms is None
        if path == "api":
            upsert(definition)
        else:
            db.execute(config.queries["definition_upsert"], definition.row_params())
        assert definition_row(db, config, "once")["repeat_interval_ms"] is None


class TestAttempts:
    def test_job_max_attempts_equals_definition_num_attempts(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Jobs from defer, defer_many and defer_async carry the definition's num_attempts."""
        definition: JobDefinition[Any] = JobDefinition(
            config, name="thrice", job_function=noop, num_attempts=3
        )
        definition.defer({"n": 1})
        definition.defer_many([{"n": 2}, {"n": 3}])

        async def deferred_async() -> None:
            try:
                await definition.defer_async({"n": 4})
            finally:
                await config.close_async()

        asyncio.run(deferred_async())
        assert definition_row(db, config, "thrice")["num_attempts"] == 3
        query = sql.SQL("SELECT max_attempts FROM {} ORDER BY id").format(
            sql.Identifier(config.schema, "job")
        )
        assert [r[0] for r in db.execute(query).fetchall()] == [3, 3, 3, 3]


class TestDefinitionRecreated:
    def test_defer_recreates_a_deleted_definition(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """After its row was deleted and the cache aged past DEFINITION_REFRESH_S, defer re-creates the row with its settings."""
        definition: JobDefinition[Any] = JobDefinition(
            config, name="nightly", job_function=noop, num_attempts=2
        )
        definition.defer({"n": 1})
        db.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job")))
        db.execute(
            sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job_definition"))
        )
        age_cache(definition)
        handle = definition.defer({"n": 2})
        assert handle.status() == "available"
        assert definition_row(db, config, "nightly")["num_attempts"] == 2
        assert count(db, config, "job") == 1

    def test_defer_async_recreates_a_deleted_definition(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The async path re-creates a deleted definition once its cache has aged."""
        definition: JobDefinition[Any] = JobDefinition(config, name="nightly", job_function=noop)
        upsert(definition)
        db.execute(
            sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job_definition"))
        )
        age_cache(definition)

        async def defer_both() -> None:
            try:
                await definition.defer_async({"n": 1})
                age_cache(definition)
                await definition.defer_many_async([{"n": 2}])
            finally:
                await config.close_async()

        asyncio.run(defer_both())
        definition_row(db, config, "nightly")
        assert count(db, config, "job") == 2

    def test_a_definition_deleted_behind_a_fresh_cache_is_written_again_by_defer(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """defer and defer_many that find no definition row write it again and insert, cache fresh or not."""
        definition: JobDefinition[Any] = JobDefinition(config, name="fresh", job_function=noop)
        definition.defer({"n": 1})
        db.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job")))
        db.execute(
            sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job_definition"))
        )
        assert definition.defer({"n": 2}).status() == "available"
        db.execute(
            sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job_definition"))
        )
        assert len(definition.defer_many([{"n": 3}, {"n": 4}])) == 2
        definition_row(db, config, "fresh")
        assert count(db, config, "job") == 3

    def test_defer_in_a_callers_transaction_without_the_definition_row_inserts_nothing(
        self, config: Config, db: psycopg.Connection[Any], test_dsn: str
    ) -> None:
        """With conn=, a missing definition row raises one clear error and nothing is inserted; the next defer writes the row."""
        definition: JobDefinition[Any] = JobDefinition(config, name="gone", job_function=noop)
        definition.defer({"n": 1})
        db.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job")))
        db.execute(
            sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job_definition"))
        )
        with psycopg.connect(test_dsn) as conn:
            with pytest.raises(OrchestraError, match=r"'gone' is missing .* nothing was inserted"):
                definition.defer({"n": 2}, conn=conn)
            conn.commit()
        assert count(db, config, "job") == 0
        assert definition.defer({"n": 3}).status() == "available"  # writes the row first
        db.execute(
            sql.SQL("DELETE FROM {}").format(sql.Identifier(config.schema, "job_definition"))
        )
        with psycopg.connect(test_dsn) as conn:
            with pytest.raises(OrchestraError, match="nothing was inserted"):
                definition.defer_many([{"n": 4}, {"n": 5}], conn=conn)
            conn.commit()
        assert count(db, config, "job") == 1

    def test_defer_refreshes_heartbeat_only_when_cache_aged(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """defer does not rewrite the definition on every call but does once the cache is older than the refresh period."""
        definition: JobDefinition[Any] = JobDefinition(config, name="hb", job_function=noop)
        definition.defer({"n": 1})
        old = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        db.execute(
            sql.SQL("UPDATE {} SET last_heartbeat_at = %s").format(
                sql.Identifier(config.schema, "job_definition")
            ),
            [old],
        )
        definition.defer({"n": 2})
        assert definition_row(db, config, "hb")["last_heartbeat_at"] == old
        age_cache(definition)
        definition.defer({"n": 3})
        heartbeat = definition_row(db, config, "hb")["last_heartbeat_at"]
        assert abs(db_now(db) - heartbeat) < dt.timedelta(minutes=1)
