"""A defer naming a dependency that the sweep deletes at the same moment.

job_insert reads its dependencies without a row lock (producers have no UPDATE
on the job table, which a locking read needs); the foreign key check of each
new dependency edge locks the dependency instead. When the sweep holds that
lock and deletes the job, the check fails with a foreign key violation on
job_dependency, which defer reports as the unknown dependency it is, and not
as a missing definition. (On defer's own connection the insert simply runs
again and finds the dependency gone, as test_orchestrator.py shows.)
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import psycopg
from psycopg import sql

from orchestra import Config, JobDefinition
from orchestra.errors import UnknownJobError
from orchestra.testing import wait_until


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


def waits_for_a_lock(db: psycopg.Connection[Any], pid: int) -> bool:
    """Whether backend ``pid`` is waiting for a lock."""
    row = db.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid]
    ).fetchone()
    return bool(row and row[0])


def sweep_while_deferring(
    config: Config,
    test_dsn: str,
    db: psycopg.Connection[Any],
    defer: Any,
    pid: int,
    swept_id: int,
) -> BaseException | None:
    """Lock ``swept_id`` as the sweep does, run ``defer`` until it waits for that lock, delete."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            defer()
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    with psycopg.connect(test_dsn, autocommit=True) as sweeping:
        with sweeping.transaction():
            params = {"now": None, "threshold_ms": 3_600_000, "limit": 10}
            locked = sweeping.execute(config.queries["job_lock_sweepable"], params).fetchall()
            assert locked == [(swept_id,)]
            thread = threading.Thread(target=run)
            thread.start()
            wait_until(lambda: waits_for_a_lock(db, pid), timeout=30, message="never blocked")
            sweeping.execute(
                config.queries["job_sweep_finalized"], {"ids": [swept_id], "archive": False}
            )
        thread.join(30)
    assert len(outcome) == 1
    return outcome[0]


def finalize_long_ago(db: psycopg.Connection[Any], config: Config, job_id: int) -> None:
    """Make ``job_id`` a job the sweep takes."""
    db.execute(
        sql.SQL("UPDATE {} SET status = 'succeeded', finalized_at = %s WHERE id = %s").format(
            sql.Identifier(config.schema, "job")
        ),
        [dt.datetime.now(dt.UTC) - dt.timedelta(days=2), job_id],
    )


def test_a_defer_in_your_transaction_names_the_dependency_swept_meanwhile(
    config: Config, db: psycopg.Connection[Any], test_dsn: str
) -> None:
    """defer(conn=...) raises UnknownJobError for the swept dependency, telling to roll back."""
    a = JobDefinition(config, name="a", job_function=noop).defer({})
    b = JobDefinition(config, name="b", job_function=noop)
    b.defer({})  # its definition is written, so the defer below goes straight to the insert
    finalize_long_ago(db, config, a.id)
    with psycopg.connect(test_dsn) as mine:
        error = sweep_while_deferring(
            config,
            test_dsn,
            db,
            lambda: b.defer({}, depends_on=[a], conn=mine),
            mine.info.backend_pid,
            a.id,
        )
        mine.rollback()
    assert isinstance(error, UnknownJobError), error
    assert error.job_ids == (a.id,)
    assert "roll your transaction back" in str(error)
