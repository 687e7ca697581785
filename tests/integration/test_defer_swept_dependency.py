"""A defer naming a dependency whose history partition the sweep drops at the same moment.

job_insert reads its dependencies from the hot table and from job_history,
without a row lock (producers have no UPDATE on the job table, which a
locking read needs). Dropping a partition of the history locks the whole
table until the sweep commits; a defer that reads the history meanwhile waits
for it, then plans and reads again without the dropped partition: it finds the
dependency gone and reports the unknown dependency it is, not a missing
definition, and inserts nothing.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import psycopg

from orchestra import Config, JobDefinition
from orchestra.errors import UnknownJobError
from orchestra.testing import wait_until
from tests._history_partitions import finish_at, skip_ids_to


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


def waits_for_a_lock(db: psycopg.Connection[Any], pid: int) -> bool:
    """Whether backend ``pid`` is waiting for a lock."""
    row = db.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid]
    ).fetchone()
    return bool(row and row[0])


def drop_while_deferring(
    config: Config, test_dsn: str, db: psycopg.Connection[Any], defer: Any, pid: int
) -> BaseException | None:
    """Drop the oldest history partition as the sweep does, run ``defer`` until it waits, commit."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            defer()
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    with psycopg.connect(test_dsn, autocommit=True) as sweeping:
        with sweeping.transaction():
            params = {"now": None, "retention_ms": 3_600_000, "limit": 1}
            dropped = sweeping.execute(config.queries["job_history_drop_before"], params).fetchall()
            assert [row[0] for row in dropped] == ["job_history_0"]
            thread = threading.Thread(target=run)
            thread.start()
            wait_until(lambda: waits_for_a_lock(db, pid), timeout=30, message="never blocked")
        thread.join(30)
    assert len(outcome) == 1
    return outcome[0]


def test_a_defer_in_your_transaction_names_the_dependency_dropped_meanwhile(
    config: Config, db: psycopg.Connection[Any], test_dsn: str
) -> None:
    """defer(conn=...) waits for the drop, then raises UnknownJobError naming the dependency."""
    a = JobDefinition(config, name="a", job_function=noop).defer({})
    b = JobDefinition(config, name="b", job_function=noop)
    b.defer({})  # its definition is written, so the defer below goes straight to the insert
    finish_at(db, config, a.id, finalized_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    skip_ids_to(db, config, 1_000_000)  # a's range is all given out: its partition may go
    with psycopg.connect(test_dsn) as mine:
        error = drop_while_deferring(
            config,
            test_dsn,
            db,
            lambda: b.defer({}, depends_on=[a], conn=mine),
            mine.info.backend_pid,
        )
        mine.rollback()
    assert isinstance(error, UnknownJobError), error
    assert error.job_ids == (a.id,)
    assert db.execute(
        f'SELECT count(*) FROM "{config.schema}".job WHERE definition = %s', ["b"]
    ).fetchone() == (1,)  # the first one only
