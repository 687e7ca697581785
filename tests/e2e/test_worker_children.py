"""Worker(processes=N): job functions run in child processes.

A crash of a child is contained: that attempt fails (it spends one attempt),
the job is retried and the child is replaced; ``attempt_timeout_ms``
terminates a stuck child.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest

from orchestra import Config, ConfigurationError, JobDefinition, Worker
from tests._running import running
from tests.e2e.apps import worker_process_jobs as jobs


def attempts(db: psycopg.Connection[Any], config: Config, job_id: int) -> list[tuple[int, str]]:
    """The job's ended attempts as (attempt, outcome), its success (if any) included."""
    return [
        (int(r[0]), str(r[1]))
        for r in db.execute(
            f'SELECT attempt, outcome FROM "{config.schema}".all_job_attempts '
            "WHERE job_id = %s ORDER BY attempt",
            [job_id],
        ).fetchall()
    ]


def test_jobs_run_in_child_processes(config: Config) -> None:
    """Every job runs in one of the N children, never in the worker process."""
    who = JobDefinition(config, name="whoami", job_function=jobs.whoami)
    handles = [who.defer({"n": n}) for n in range(8)]
    with running(Worker(config, processes=2, process_interval_ms=100), join_timeout=60) as worker:
        results = [h.result(timeout=60) for h in handles]
    assert [r["n"] for r in results] == list(range(8))
    pids = {r["pid"] for r in results}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2
    assert worker.concurrency == 2


def test_a_child_killed_by_sigkill_costs_one_attempt_and_the_job_completes(
    config: Config, db: psycopg.Connection[Any]
) -> None:
    """The child dies mid-job: attempt 1 is failed and logged, attempt 2 in a new child succeeds."""
    crash = JobDefinition(
        config,
        name="crash",
        job_function=jobs.crash_on_first_attempt,
        num_attempts=3,
        backoff="none",
    )
    handle = crash.defer({})
    with running(Worker(config, processes=1, process_interval_ms=100), join_timeout=60):
        result = handle.result(timeout=60)
    assert result["attempt"] == 2
    log = attempts(db, config, handle.id)
    assert log == [(1, "failed"), (2, "succeeded")]
    error = db.execute(
        f'SELECT error FROM "{config.schema}".all_job_attempts WHERE job_id = %s AND attempt = 1',
        [handle.id],
    ).fetchone()
    assert error is not None
    assert "SIGKILL" in error[0]


def test_attempt_timeout_terminates_a_stuck_child(
    config: Config, db: psycopg.Connection[Any]
) -> None:
    """A child past attempt_timeout_ms is terminated; the attempt is logged as timed out."""
    stuck = JobDefinition(
        config,
        name="hang",
        job_function=jobs.hang,
        attempt_timeout_ms=300,
        num_attempts=2,
        backoff="none",
    )
    after = JobDefinition(config, name="whoami", job_function=jobs.whoami)
    handle = stuck.defer({})
    with running(Worker(config, processes=1, process_interval_ms=100), join_timeout=60):
        with pytest.raises(Exception, match="attempt_timeout_ms"):
            handle.result(timeout=60)
        # The pool replaced the child: the next job still runs.
        assert after.defer({"n": 1}).result(timeout=60)["n"] == 1
    assert attempts(db, config, handle.id) == [(1, "timed_out"), (2, "timed_out")]


def test_processes_and_concurrency_must_agree(config: Config) -> None:
    """Each child runs one job: a different concurrency is refused, naming the argument."""
    with pytest.raises(ConfigurationError, match="concurrency"):
        Worker(config, processes=2, concurrency=4)
    with pytest.raises(ConfigurationError, match="processes"):
        Worker(config, processes=0)
    assert Worker(config, processes=3).concurrency == 3
