"""orchestra behind a real PgBouncer in transaction pooling mode (tests/_pgbouncer.py).

First that the PgBouncer of the fixture really pools transactions (one client's
statements are served by different server backends), then that orchestra
needs ``transaction_pooling`` there: without it psycopg prepares its frequent
statements on the server connection of the moment, which the next
transaction does not have (or has from another client), and ``defer`` fails;
with it the same traffic passes, and jobs run and their results come back
with LISTEN on the direct DSN and without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orchestra import Config, JobContext, JobDefinition, JobHandle, Worker
from tests._pgbouncer import SERVER_POOL_SIZE, PgBouncer

#: Rounds of alternating defers from two clients: psycopg prepares a statement
#: on its sixth execution, so a few rounds reach it on both clients.
ROUNDS = 30
#: The errors of a prepared statement missing on the server connection of the
#: moment, or prepared there already by another client.
PREPARED_STATEMENT_ERRORS = (
    psycopg.errors.InvalidSqlStatementName,
    psycopg.errors.DuplicatePreparedStatement,
)


def _backend(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {"job_id": ctx.job_id, "n": payload["n"]}


def _define(config: Config) -> JobDefinition[Any]:
    return JobDefinition(config, name="echo", job_function=_echo)


def _alternate_defers(first: Config, second: Config) -> list[JobHandle]:
    """Defer from both clients in turns (each keeps one pooled connection)."""
    definitions = [_define(first), _define(second)]
    handles = []
    for n in range(ROUNDS):
        for definition in definitions:
            handles.append(definition.defer({"n": n}))
    return handles


@pytest.fixture
def unpooled_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No transaction pooling nor listen DSN from the environment: only what a test says."""
    monkeypatch.delenv("ORCHESTRA_TRANSACTION_POOLING", raising=False)
    monkeypatch.delenv("ORCHESTRA_LISTEN_DSN", raising=False)


@pytest.fixture
def two_clients(
    pgbouncer: PgBouncer, config: Config, unpooled_env: None, request: pytest.FixtureRequest
) -> Iterator[tuple[Config, Config]]:
    """Two Configs through PgBouncer on the test's schema; ``transaction_pooling`` as parametrized."""
    pooling: bool = request.param
    clients = tuple(
        Config(pgbouncer.dsn, schema=config.schema, transaction_pooling=pooling) for _ in range(2)
    )
    yield clients[0], clients[1]
    for client in clients:
        client.close()


def test_the_fixture_pgbouncer_hands_one_client_different_backends_between_transactions(
    pgbouncer: PgBouncer,
) -> None:
    """Between two of its transactions a client moves to another server backend."""
    assert [
        row["pool_mode"] for row in pgbouncer.admin("SHOW POOLS") if row["database"] != "pgbouncer"
    ] == ["transaction"]
    settings = {row["key"]: row["value"] for row in pgbouncer.admin("SHOW CONFIG")}
    assert settings["default_pool_size"] == str(SERVER_POOL_SIZE)
    with (
        psycopg.connect(pgbouncer.dsn, autocommit=True) as holder,
        psycopg.connect(pgbouncer.dsn, autocommit=True) as client,
        psycopg.connect(pgbouncer.dsn, autocommit=True) as other,
    ):
        # The fresh PgBouncer has one idle server connection (its readiness probe's).
        holder.execute("BEGIN")
        held = _backend(holder)  # busy until the holder commits
        first = _backend(client)  # a second server connection, idle again after the statement
        assert first != held
        other.execute("BEGIN")
        # PgBouncer hands out an idle server connection before it opens one.
        assert _backend(other) == first
        holder.execute("COMMIT")
        # The client's last backend is busy with another client's transaction:
        # its next transaction runs on the holder's.
        second = _backend(client)
        other.execute("COMMIT")
    assert second != first, (
        f"the client stayed on backend {first} across transactions: not transaction pooling"
    )
    assert second == held


@pytest.mark.parametrize("two_clients", [False], indirect=True)
def test_without_transaction_pooling_defer_fails_on_a_prepared_statement(
    two_clients: tuple[Config, Config],
) -> None:
    """Behind PgBouncer a Config without transaction_pooling prepares statements: defer breaks."""
    with pytest.raises(PREPARED_STATEMENT_ERRORS, match=r'prepared statement "_pg3_\d+"'):
        _alternate_defers(*two_clients)


@pytest.mark.parametrize("two_clients", [True], indirect=True)
def test_with_transaction_pooling_the_same_defers_pass(
    two_clients: tuple[Config, Config], db: psycopg.Connection[Any]
) -> None:
    """The same traffic with transaction_pooling: every job is inserted."""
    handles = _alternate_defers(*two_clients)
    assert len({h.id for h in handles}) == 2 * ROUNDS
    schema = two_clients[0].schema
    row = db.execute(
        sql.SQL("SELECT count(*) FROM {}.job").format(sql.Identifier(schema))
    ).fetchone()
    assert row == (2 * ROUNDS,)


def test_jobs_run_and_results_come_back_through_pgbouncer_with_and_without_listen(
    pgbouncer: PgBouncer, pgbouncer_config: Config, test_dsn: str, unpooled_env: None
) -> None:
    """A worker behind PgBouncer runs jobs; result() returns with LISTEN direct and by polling."""
    echo = _define(pgbouncer_config)
    polling = Config(pgbouncer.dsn, schema=pgbouncer_config.schema, transaction_pooling=True)
    assert pgbouncer_config.listen_dsn == test_dsn
    assert polling.listen_dsn is None
    worker = Worker(
        pgbouncer_config, concurrency=2, name="behind-pgbouncer", process_interval_ms=100
    )
    worker.start()
    try:
        handles = echo.defer_many([{"n": n} for n in range(20)])
        listened = [h.result(timeout=60) for h in handles[:10]]
        polled = [
            JobHandle(h.id, polling).result(timeout=60, poll_interval_s=0.1) for h in handles[10:]
        ]
        awaited = asyncio.run(
            JobHandle(handles[-1].id, polling).result_async(timeout=60, poll_interval_s=0.1)
        )
    finally:
        worker.stop()
        worker.join(timeout=30)
        polling.close()
    assert listened + polled == [{"job_id": h.id, "n": n} for n, h in enumerate(handles)]
    assert awaited == {"job_id": handles[-1].id, "n": 19}
