"""The ``scheduled`` status, attempt numbers across a retry by hand, and the run_at of a
job that failed for good, against a real PostgreSQL (decision 0036).

What it guarantees:

* an available job whose run_at is ahead is reported, filtered and counted as
  ``scheduled``; ``available`` means due now; the job turns ``available`` by
  the clock alone, nothing is written;
* a retry by hand, of one job or of every failed job, keeps the attempt
  number and grants the definition's num_attempts again, so the attempt log
  reads #1, #2, #3, #4;
* a job that failed for good keeps the run_at of its last attempt, whatever
  backoff its definition has.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import psycopg
import pytest

from orchestra import Backoff, Config, ConfigurationError, JobDefinition
from orchestra._orchestrator._gauges import read_queue_snapshot
from orchestra._orchestrator._rescuer import Rescuer
from orchestra.testing import run_until_empty


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


def boom(payload: Any = None) -> None:
    """A job function that always fails."""
    raise ValueError("boom")


def sql(db: psycopg.Connection[Any], config: Config, query: str, *params: Any) -> list[Any]:
    """Run ``query`` with ``{s}`` as the quoted test schema; return its rows."""
    cursor = db.execute(query.replace("{s}", f'"{config.schema}"'), list(params))
    return cursor.fetchall() if cursor.description else []


HOUR_MS = 3_600_000


class TestScheduled:
    def test_a_delayed_job_is_listed_counted_and_shown_as_scheduled(self, config: Config) -> None:
        """list, count, get, the handle and the definition counts say scheduled; available is due now."""
        definition = JobDefinition(config, name="later", job_function=noop)
        due = definition.defer({})
        delayed = definition.defer({}, delay_ms=HOUR_MS)

        jobs = config.jobs
        assert jobs.get(delayed.id).status == "scheduled"
        assert delayed.status() == "scheduled"
        assert jobs.get(due.id).status == "available"
        assert [j.id for j in jobs.list(status="scheduled")] == [delayed.id]
        assert [j.id for j in jobs.list(status="available")] == [due.id]
        assert [j.id for j in jobs.list(status=["scheduled", "available"])] == [
            due.id,
            delayed.id,
        ]
        assert {j.id: j.status for j in jobs.list()} == {
            due.id: "available",
            delayed.id: "scheduled",
        }
        assert (jobs.count(status="scheduled"), jobs.count(status="available")) == (1, 1)
        (info,) = jobs.definitions()
        assert (info.counts["scheduled"], info.counts["available"]) == (1, 1)

    def test_async_list_filters_on_scheduled(self, config: Config) -> None:
        """config.jobs_async takes the same status."""

        definition = JobDefinition(config, name="later", job_function=noop)
        delayed = definition.defer({}, delay_ms=HOUR_MS)
        definition.defer({})

        async def read() -> tuple[list[int], int]:
            listed = await config.jobs_async.list(status="scheduled")
            counted = await config.jobs_async.count(status="scheduled")
            await config.close_async()
            return [j.id for j in listed], counted

        assert asyncio.run(read()) == ([delayed.id], 1)

    def test_a_scheduled_job_becomes_available_when_its_run_at_comes_without_a_write(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The stored status stays available; only the clock moves it from scheduled."""
        handle = JobDefinition(config, name="later", job_function=noop).defer({}, delay_ms=HOUR_MS)
        assert sql(db, config, "SELECT status::text FROM {s}.job WHERE id = %s", handle.id) == [
            ("available",)
        ]
        sql(
            db,
            config,
            "UPDATE {s}.job SET run_at = now() - interval '1 second' WHERE id = %s",
            handle.id,
        )
        assert config.jobs.get(handle.id).status == "available"
        assert config.jobs.list(status="scheduled") == []

    def test_a_retry_waiting_for_its_backoff_is_scheduled(self, config: Config) -> None:
        """A failed attempt with attempts left and a backoff puts the job in scheduled."""
        handle = JobDefinition(
            config, name="flaky", job_function=boom, num_attempts=3, backoff=Backoff.fixed(HOUR_MS)
        ).defer({})
        run_until_empty(config)
        job = config.jobs.get(handle.id)
        assert (job.status, job.attempt) == ("scheduled", 1)

    def test_an_unknown_status_is_refused_naming_scheduled_among_the_choices(
        self, config: Config
    ) -> None:
        """A status filter is checked against the known names: one clear error, no query."""
        with pytest.raises(ConfigurationError, match="scheduled"):
            config.jobs.list(status="delayed")

    def test_the_queue_gauge_counts_scheduled_apart_from_jobs_due_now(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """orchestra_jobs{status} has a scheduled value; available counts the due jobs only."""
        definition = JobDefinition(config, name="gauged", job_function=noop, channel="gauged")
        definition.defer({})
        definition.defer({}, delay_ms=HOUR_MS)
        definition.defer({}, delay_ms=HOUR_MS)
        snapshot = read_queue_snapshot(db, config, worker_stale_threshold_ms=60_000)
        depth = {status: n for status, channel, n in snapshot.depth if channel == "gauged"}
        assert depth == {"waiting": 0, "scheduled": 2, "available": 1, "running": 0}


class TestAttemptNumbers:
    def test_a_retried_job_numbers_its_attempts_on_and_gets_its_budget_again(
        self, config: Config
    ) -> None:
        """#1, #2 fail, retry by hand, #3, #4 fail: the log reads 1, 2, 3, 4."""
        handle = JobDefinition(
            config, name="failing", job_function=boom, num_attempts=2, backoff="none"
        ).defer({})
        run_until_empty(config)
        retried = config.jobs.retry(handle.id)
        assert (retried.status, retried.attempt, retried.max_attempts) == ("available", 2, 4)
        run_until_empty(config)
        job = config.jobs.get(handle.id)
        assert (job.status, job.attempt, job.max_attempts) == ("failed", 4, 4)
        assert job.attempts is not None
        assert [(a.attempt, a.outcome) for a in job.attempts] == [
            (1, "failed"),
            (2, "failed"),
            (3, "failed"),
            (4, "failed"),
        ]

    def test_retry_failed_numbers_attempts_on_for_every_job(self, config: Config) -> None:
        """The bulk retry keeps each job's attempt number and adds num_attempts to its budget."""
        definition = JobDefinition(
            config, name="failing", job_function=boom, num_attempts=2, backoff="none"
        )
        handles = [definition.defer({"i": i}) for i in range(2)]
        run_until_empty(config)
        assert config.jobs.retry_failed() == 2
        assert {(j.attempt, j.max_attempts) for j in config.jobs.list()} == {(2, 4)}
        run_until_empty(config)
        for handle in handles:
            job = config.jobs.get(handle.id)
            assert job.attempts is not None
            assert [a.attempt for a in job.attempts] == [1, 2, 3, 4]

    def test_a_cancelled_job_that_never_ran_gets_the_definitions_budget(
        self, config: Config
    ) -> None:
        """No attempt spent: a retry leaves attempt at 0 and max_attempts at num_attempts."""
        handle = JobDefinition(config, name="job", job_function=noop, num_attempts=3).defer({})
        config.jobs.cancel(handle.id)
        job = config.jobs.retry(handle.id)
        assert (job.attempt, job.max_attempts) == (0, 3)


class TestFinalFailure:
    @pytest.mark.parametrize(
        "backoff", [Backoff.none(), Backoff.fixed(HOUR_MS)], ids=["none", "fixed"]
    )
    def test_a_job_that_failed_for_good_keeps_the_run_at_of_its_last_attempt(
        self, config: Config, backoff: Backoff
    ) -> None:
        """No run_at for a retry that will never happen: the history keeps the due time."""
        handle = JobDefinition(
            config, name="doomed", job_function=boom, num_attempts=1, backoff=backoff
        ).defer({})
        due_at = config.jobs.get(handle.id).run_at
        run_until_empty(config)
        job = config.jobs.get(handle.id)
        assert job.status == "failed"
        assert job.run_at == due_at
        assert job.finalized_at is not None and job.run_at <= job.finalized_at

    def test_a_rescued_job_with_no_attempt_left_keeps_its_run_at(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The rescuer fails a job whose last lease expired without moving its run_at."""
        handle = JobDefinition(config, name="lost", job_function=noop, num_attempts=1).defer({})
        due_at = config.jobs.get(handle.id).run_at
        claimed = db.execute(
            config.queries["job_claim"],
            {"channels": ["_default"], "now": None, "limit": 1, "worker_id": 1, "claim_id": "c"},
        ).fetchall()
        assert len(claimed) == 1
        Rescuer(config, interval_ms=5_000, worker_stale_threshold_ms=60_000).run_once(
            db, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
        )
        job = config.jobs.get(handle.id)
        assert job.status == "failed" and job.run_at == due_at
