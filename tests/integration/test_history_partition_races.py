"""The sweeper's partition work racing the statements that finish jobs.

``job_history_prepare`` and ``job_history_drop_before`` read the history and
then change its partitions (ATTACH, DROP). A finish that is in flight while
they read it (its row inserted, not yet committed) is invisible to that read
but is waited for by the DDL's lock; these tests hold such a finish open,
let the sweeper reach its lock wait, commit the finish, and check what the
sweeper did with the row it could not see.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition
from orchestra._orchestrator import _sweeper
from orchestra._orchestrator._service import RunResult
from orchestra._orchestrator._sweeper import Sweeper
from orchestra.testing import wait_until
from tests._history_partitions import finish_at, history_partitions, partition_of, skip_ids_to
from tests._worker_sql import claim, finish

#: How long the sweeper may wait for its lock here: the test commits the
#: finish it waits for as soon as it waits, whatever the machine's load.
PATIENT_LOCK_TIMEOUT_MS = 60_000


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


def sweeper(config: Config) -> Sweeper:
    """A sweeper with a retention of one hour."""
    return Sweeper(
        config,
        interval_ms=300_000,
        finalized_job_threshold_ms=3_600_000,
        stale_definition_threshold_ms=3_600_000,
        archive=False,
    )


def run_while_a_finish_commits(
    test_dsn: str, config: Config, commit: Callable[[], None]
) -> RunResult:
    """Run a sweeper pass; once it waits for a lock, ``commit`` the finish it waits for."""
    outcome: dict[str, Any] = {}
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        pid = conn.info.backend_pid

        def run() -> None:
            try:
                outcome["result"] = sweeper(config).run_once(conn, None)
            except Exception as exc:  # handed to the test's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            with psycopg.connect(test_dsn, autocommit=True) as observer:
                wait_until(
                    lambda: (
                        observer.execute(
                            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                            [pid],
                        ).fetchone()
                        == (True,)
                    ),
                    timeout=30,
                    message="the sweeper never waited for a lock",
                )
            commit()
        finally:
            thread.join(timeout=60)
    if "error" in outcome:
        raise outcome["error"]
    result: RunResult = outcome["result"]
    return result


def test_prepare_moves_a_job_that_finished_into_the_default_partition_meanwhile(
    config: Config,
    db: psycopg.Connection[Any],
    test_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A finish into the default partition in flight while a partition is made does not fail the pass.

    The ids have passed the partitions made so far (no orchestrator ran for a
    while), so every finish lands in the default partition, where the new
    partition's rows must not be when it is attached. The pass must make the
    partition with the row in it, not fail (which skips the retention too).
    """
    monkeypatch.setattr(_sweeper, "HISTORY_LOCK_TIMEOUT_MS", PATIENT_LOCK_TIMEOUT_MS)
    skip_ids_to(db, config, 5_000_000)
    handle = JobDefinition(config, name="job", job_function=noop).defer({})
    claimed = claim(db, config)[0]
    with psycopg.connect(test_dsn) as finisher:  # a worker's finishing transaction
        assert finish(finisher, config, claimed, "succeeded", '{"n": 1}') != []
        result = run_while_a_finish_commits(test_dsn, config, finisher.commit)
    assert result.counts["history_partitions_prepared"] == 3
    assert partition_of(db, config, handle.id) == "job_history_5000000"
    assert handle.result(timeout=0) == {"n": 1}


def test_drop_keeps_a_job_that_finished_into_the_partition_meanwhile(
    config: Config,
    db: psycopg.Connection[Any],
    test_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job that finishes into a partition while the partition is being dropped is not lost.

    The partition's other jobs finished long ago; this one ran late (a job
    delayed, a retry, a long run). Its finish commits while the drop waits for
    its lock: the drop decided on a read that could not see it.
    """
    monkeypatch.setattr(_sweeper, "HISTORY_LOCK_TIMEOUT_MS", PATIENT_LOCK_TIMEOUT_MS)
    definition = JobDefinition(config, name="job", job_function=noop)
    old = definition.defer({})
    late = definition.defer({})
    finish_at(db, config, old.id, "succeeded", dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    skip_ids_to(db, config, 2_000_000)  # every id of job_history_0 given out
    claimed = claim(db, config)[0]
    assert claimed[0] == late.id
    with psycopg.connect(test_dsn) as finisher:
        assert finish(finisher, config, claimed, "succeeded", '{"n": 2}') != []
        run_while_a_finish_commits(test_dsn, config, finisher.commit)
    assert late.status() == "succeeded"
    assert late.result(timeout=0) == {"n": 2}


def test_a_partition_past_the_retention_is_dropped_behind_an_older_one_still_kept(
    config: Config, db: psycopg.Connection[Any]
) -> None:
    """Retention drops every partition whose jobs all finished before the cutoff.

    The oldest partition holds a job that finished a minute ago (it was
    delayed, or retried from the history): that partition stays, but the
    next one, whose every job finished two days ago, must go too.
    """
    definition = JobDefinition(config, name="job", job_function=noop)
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    delayed = definition.defer({})
    skip_ids_to(db, config, 1_000_000)
    expired = definition.defer({})
    finish_at(db, config, expired.id, "succeeded", two_days_ago)
    skip_ids_to(db, config, 3_000_000)  # every id of both ranges given out
    finish_at(db, config, delayed.id, "succeeded")  # finished just now, into job_history_0
    sweeper(config).run_once(db, None)
    assert "job_history_0" in history_partitions(db, config)
    assert "job_history_1000000" not in history_partitions(db, config)
