"""A Config set for a transaction pooler, against a real PostgreSQL (directly).

``transaction_pooling=True`` must leave no prepared statement on any server
connection and open no LISTEN through ``dsn``: workers poll and result waits
read again and again, unless ``listen_dsn`` gives them a direct connection to
LISTEN on. The same behaviour through a real PgBouncer in transaction mode is
tested in the PgBouncer tests; here each part is checked where it is visible,
in ``pg_prepared_statements`` and ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from orchestra import Config, JobDefinition, JobHandle, Worker
from orchestra.testing import wait_until

#: psycopg prepares a statement a connection ran this many times (its default).
PSYCOPG_PREPARE_THRESHOLD = 5
DEADLINE_S = 30.0


def _tagged(dsn: str, tag: str) -> str:
    """``dsn`` with an application_name that finds its sessions in pg_stat_activity."""
    return make_conninfo(dsn, application_name=tag)


@pytest.fixture
def tag() -> str:
    return f"tp-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pooled(test_dsn: str, schema: str, config: Config, tag: str) -> Iterator[Config]:
    """A Config on the test's migrated schema, set for a transaction pooler, no listen DSN."""
    pooled = Config(_tagged(test_dsn, tag), schema=schema, transaction_pooling=True)
    yield pooled
    pooled.close()


def _prepared_on_pooled_connection(config: Config) -> int:
    with config.connection() as conn:
        row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert row is not None
    return int(row[0])


def _listening(db: psycopg.Connection[Any], application_name: str) -> int:
    """Sessions of ``application_name`` whose last statement was a LISTEN."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        " AND query ILIKE 'LISTEN %%'",
        [application_name],
    ).fetchone()
    assert row is not None
    return int(row[0])


def _sessions(db: psycopg.Connection[Any], application_name: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name]
    ).fetchone()
    assert row is not None
    return int(row[0])


def _outcome_reads(db: psycopg.Connection[Any], application_name: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        " AND query LIKE '%%job_history WHERE id%%'",
        [application_name],
    ).fetchone()
    assert row is not None
    return int(row[0])


def _echo(payload: Any) -> Any:
    return payload


class TestPreparedStatements:
    def test_pooled_connections_never_prepare_statements(self, pooled: Config) -> None:
        echo = JobDefinition(pooled, name="echo", job_function=_echo)
        for n in range(PSYCOPG_PREPARE_THRESHOLD * 3):
            echo.defer({"n": n})
        assert _prepared_on_pooled_connection(pooled) == 0

    def test_without_the_setting_the_same_defers_prepare_statements(self, config: Config) -> None:
        """The check above can see a prepared statement: psycopg's default makes some."""
        echo = JobDefinition(config, name="echo", job_function=_echo)
        for n in range(PSYCOPG_PREPARE_THRESHOLD * 3):
            echo.defer({"n": n})
        assert _prepared_on_pooled_connection(config) > 0

    def test_a_worker_with_the_setting_opens_its_pool_without_prepared_statements(
        self, pooled: Config
    ) -> None:
        """What a session prepared only it can see: the pool's arguments say it never will.

        (Through a real PgBouncer in transaction mode a prepared statement fails
        the next transaction that lands elsewhere; the PgBouncer tests show it.)
        """
        echo = JobDefinition(pooled, name="echo", job_function=_echo)
        handles = echo.defer_many([{"n": n} for n in range(20)])
        worker = Worker(pooled, concurrency=4, process_interval_ms=50)
        worker.start()
        try:
            results = [h.result(timeout=DEADLINE_S, poll_interval_s=0.05) for h in handles]
            assert worker._pool is not None
            kwargs = worker._pool.kwargs
            assert isinstance(kwargs, dict)
            assert kwargs["prepare_threshold"] is None
        finally:
            worker.stop()
            worker.join()
        assert results == [{"n": n} for n in range(20)]
        assert _prepared_on_pooled_connection(pooled) == 0


class TestListen:
    def test_a_worker_without_a_listen_dsn_polls_and_still_runs_jobs(
        self, pooled: Config, db: psycopg.Connection[Any], tag: str
    ) -> None:
        echo = JobDefinition(pooled, name="echo", job_function=_echo)
        worker = Worker(pooled, concurrency=2, process_interval_ms=50)
        worker.start()
        try:
            handle = echo.defer({"polled": True})
            assert handle.result(timeout=DEADLINE_S, poll_interval_s=0.05) == {"polled": True}
            assert worker._listener is None
            assert _listening(db, tag) == 0
        finally:
            worker.stop()
            worker.join()

    def test_a_worker_listens_on_the_listen_dsn(
        self, test_dsn: str, schema: str, config: Config, db: psycopg.Connection[Any], tag: str
    ) -> None:
        listen_tag = f"{tag}-listen"
        with Config(
            _tagged(test_dsn, tag),
            schema=schema,
            transaction_pooling=True,
            listen_dsn=_tagged(test_dsn, listen_tag),
        ) as pooled:
            echo = JobDefinition(pooled, name="echo", job_function=_echo)
            # A poll so slow that only a notification through the listen DSN runs the job soon.
            worker = Worker(pooled, concurrency=2, process_interval_ms=600_000)
            worker.start()
            try:
                wait_until(lambda: _listening(db, listen_tag) == 1, timeout=DEADLINE_S)
                assert _listening(db, tag) == 0
                handle = echo.defer({"woken": True})
                assert handle.result(timeout=DEADLINE_S) == {"woken": True}
            finally:
                worker.stop()
                worker.join()

    def test_a_result_wait_without_a_listen_dsn_reads_again_on_pooled_connections(
        self, pooled: Config, db: psycopg.Connection[Any], tag: str
    ) -> None:
        echo = JobDefinition(pooled, name="echo", job_function=_echo)
        handle = echo.defer({"waited": True})
        outcome: list[Any] = []
        waiter = threading.Thread(
            target=lambda: outcome.append(handle.result(timeout=DEADLINE_S, poll_interval_s=0.05))
        )
        waiter.start()
        try:
            # The waiter reads the job's row again and again on a pooled connection...
            wait_until(lambda: _outcome_reads(db, tag) >= 1, timeout=DEADLINE_S)
            # ...and no session of this Config ever LISTENs.
            assert _listening(db, tag) == 0
        finally:
            worker = Worker(pooled, concurrency=1, process_interval_ms=50)
            worker.start()
            waiter.join(timeout=DEADLINE_S)
            worker.stop()
            worker.join()
        assert outcome == [{"waited": True}]
        assert _listening(db, tag) == 0

    def test_a_result_wait_listens_on_the_listen_dsn(
        self, test_dsn: str, schema: str, config: Config, db: psycopg.Connection[Any], tag: str
    ) -> None:
        listen_tag = f"{tag}-listen"
        with Config(
            _tagged(test_dsn, tag),
            schema=schema,
            transaction_pooling=True,
            listen_dsn=_tagged(test_dsn, listen_tag),
        ) as pooled:
            echo = JobDefinition(pooled, name="echo", job_function=_echo)
            handle = echo.defer({"notified": True})
            outcome: list[Any] = []
            # A poll so slow that the wait ends in time only by its notification.
            waiter = threading.Thread(
                target=lambda: outcome.append(
                    handle.result(timeout=DEADLINE_S * 4, poll_interval_s=120.0)
                )
            )
            waiter.start()
            try:
                # The waiter's own connection (it LISTENs, then reads the row on it).
                wait_until(lambda: _sessions(db, listen_tag) == 1, timeout=DEADLINE_S)
                assert _listening(db, tag) == 0
            finally:
                worker = Worker(pooled, concurrency=1, process_interval_ms=50)
                worker.start()
                waiter.join(timeout=DEADLINE_S * 4)
                worker.stop()
                worker.join()
            assert outcome == [{"notified": True}]

    def test_an_async_result_wait_without_a_listen_dsn_polls(
        self, pooled: Config, db: psycopg.Connection[Any], tag: str
    ) -> None:
        echo = JobDefinition(pooled, name="echo", job_function=_echo)
        handle = echo.defer({"async": True})

        async def wait() -> Any:
            try:
                return await handle.result_async(timeout=DEADLINE_S, poll_interval_s=0.05)
            finally:
                await pooled.close_async()

        worker = Worker(pooled, concurrency=1, process_interval_ms=50)
        worker.start()
        try:
            result = asyncio.run(wait())
        finally:
            worker.stop()
            worker.join()
        assert result == {"async": True}
        assert _listening(db, tag) == 0


def _terminate(db: psycopg.Connection[Any], application_name: str) -> int:
    """End every session of ``application_name``, as a restart or a failover would."""
    rows = db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        [application_name],
    ).fetchall()
    return len(rows)


class TestBrokenConnections:
    """A result wait outlives the connections it uses (a restart, a failover)."""

    def test_a_wait_whose_listener_is_cut_listens_again_and_returns_the_result(
        self, test_dsn: str, schema: str, config: Config, db: psycopg.Connection[Any], tag: str
    ) -> None:
        listen_tag = f"{tag}-listen"
        with Config(
            _tagged(test_dsn, tag), schema=schema, listen_dsn=_tagged(test_dsn, listen_tag)
        ) as waiting:
            echo = JobDefinition(waiting, name="echo", job_function=_echo)
            handle = echo.defer({"survived": True})
            outcome: list[Any] = []
            errors: list[BaseException] = []

            def wait() -> None:
                try:
                    outcome.append(handle.result(timeout=DEADLINE_S * 4, poll_interval_s=120.0))
                except BaseException as exc:  # reported below
                    errors.append(exc)

            waiter = threading.Thread(target=wait)
            waiter.start()
            try:
                wait_until(lambda: _sessions(db, listen_tag) == 1, timeout=DEADLINE_S)
                old = db.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [listen_tag]
                ).fetchone()
                assert _terminate(db, listen_tag) == 1
                # A new listener, not the old one: the wait noticed and listened again.
                wait_until(
                    lambda: (
                        db.execute(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE application_name = %s AND pid <> %s",
                            [listen_tag, old[0] if old else 0],
                        ).fetchone()
                        == (1,)
                    ),
                    timeout=DEADLINE_S,
                )
            finally:
                worker = Worker(waiting, concurrency=1, process_interval_ms=50)
                worker.start()
                waiter.join(timeout=DEADLINE_S * 2)
                worker.stop()
                worker.join()
            assert errors == []
            assert outcome == [{"survived": True}]

    def test_a_wait_reads_past_the_dead_connections_of_its_pool(
        self, test_dsn: str, schema: str, config: Config, db: psycopg.Connection[Any], tag: str
    ) -> None:
        echo = JobDefinition(config, name="echo", job_function=_echo)
        handle = echo.defer({"done": True})
        worker = Worker(config, concurrency=1, process_interval_ms=50)
        worker.start()
        try:
            assert handle.result(timeout=DEADLINE_S, poll_interval_s=0.05) == {"done": True}
        finally:
            worker.stop()
            worker.join()
        with Config(_tagged(test_dsn, tag), schema=schema, pool_max_size=3) as reading:
            # Fill the pool, then kill every connection in it.
            with reading.connection(), reading.connection(), reading.connection():
                pass
            assert _terminate(db, tag) >= 1
            assert JobHandle(handle.id, reading).result(timeout=DEADLINE_S) == {"done": True}
