"""The release of a dependent by the finishes of its dependencies (decision 0007).

A worker's lane commits ``job_finish_many`` and ``job_release_dependents`` in
one transaction. When a job has two dependencies that two workers finish at
the same moment, each release statement runs before the other finish
commits: each sees the other dependency unfinished.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import psycopg

from orchestra import Config, JobDefinition
from orchestra.testing import wait_until
from tests._worker_sql import claim, finish


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


def release(conn: psycopg.Connection[Any], config: Config, job_ids: list[int]) -> None:
    """Run job_release_dependents as a worker's lane does after its finishes."""
    conn.execute(
        config.queries["job_release_dependents"],
        {"ids": job_ids, "notify_channel": config.notify_channel},
    ).fetchall()


def test_two_dependencies_finished_at_once_release_their_dependent(
    config: Config, db: psycopg.Connection[Any], test_dsn: str
) -> None:
    """The later of two concurrent finishes releases the dependent, without the orchestrator."""
    definition = JobDefinition(config, name="job", job_function=noop)
    a = definition.defer({})
    c = definition.defer({})
    b = definition.defer({}, depends_on=[a, c])
    assert b.status() == "waiting"
    claimed = {row[0]: row for row in claim(db, config)}
    with psycopg.connect(test_dsn) as first, psycopg.connect(test_dsn) as second:
        assert finish(first, config, claimed[a.id], "succeeded") != []
        release(first, config, [a.id])  # c still runs, in this snapshot
        second_pid = second.info.backend_pid

        def finish_c() -> None:
            assert finish(second, config, claimed[c.id], "succeeded") != []
            release(second, config, [c.id])
            second.commit()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            done = pool.submit(finish_c)
            # The second finish waits for the first transaction (its lock on
            # the dependent), or, were it not to, is over before the first
            # commits: either way the first commits only then.
            wait_until(
                lambda: done.done() or waits_for_a_lock(db, second_pid),
                message="the second finish neither ended nor waited",
            )
            first.commit()
            done.result(timeout=60)
    assert b.status() == "available"


def waits_for_a_lock(db: psycopg.Connection[Any], pid: int) -> bool:
    """Whether the session ``pid`` is waiting for a lock."""
    row = db.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid]
    ).fetchone()
    return bool(row and row[0])
