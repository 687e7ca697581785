"""Snoozing a job and cancelling a running one, against a real PostgreSQL.

A snooze sends the job back to ``available`` for a while without spending an
attempt, and logs the run as ``snoozed``; a cancel of a running job stops its
attempt on the worker (an async task cancelled, a child process terminated, a
sync function told through ``ctx.should_stop``), told by a notification or, for a
worker without LISTEN, by its heartbeat.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestra import (
    Config,
    ConfigurationError,
    JobContext,
    JobDefinition,
    JobStateError,
    Snooze,
    UnknownJobError,
    Worker,
    events,
)
from orchestra.testing import DrainResult, EventRecorder, drain, inline, wait_until
from tests._running import running
from tests._worker_sql import claim, finish
from tests.integration import _child_jobs

#: How long a cancel may take to stop a running attempt, at most (a deadline for
#: the wait, not a measurement: the notification usually takes milliseconds).
CANCEL_DEADLINE_S = 10.0
#: A heartbeat later than the deadline: what stops the attempt then is the
#: cancel's notification, not the heartbeat's fallback.
NO_HEARTBEAT: dict[str, Any] = {"heartbeat_interval_ms": 60_000}


def make(
    config: Config, name: str, function: Callable[..., Any], **kwargs: Any
) -> JobDefinition[Any]:
    kwargs.setdefault("lock_interval_ms", 5_000)
    return JobDefinition(config, name=name, job_function=function, **kwargs)


def log_of(db: psycopg.Connection[Any], config: Config, job_id: int) -> list[tuple[int, str]]:
    """The job's attempt log as (attempt, outcome), oldest first, its success included."""
    rows = db.execute(
        f'SELECT attempt, outcome FROM "{config.schema}".all_job_attempts '
        "WHERE job_id = %s ORDER BY finished_at, id NULLS LAST",
        [job_id],
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def errors_of(db: psycopg.Connection[Any], config: Config, job_id: int, outcome: str) -> list[str]:
    rows = db.execute(
        f'SELECT error FROM "{config.schema}".all_job_attempts '
        "WHERE job_id = %s AND outcome = %s ORDER BY finished_at",
        [job_id, outcome],
    ).fetchall()
    return [str(r[0]) for r in rows]


def listening(worker: Worker) -> None:
    """Wait until the worker's LISTEN connection is up: a cancel notified before it
    is missed (the heartbeat finds the job then), and these tests wait for the
    notification."""
    wait_until(lambda: worker._listener is not None and worker._listener.connected.is_set())


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie not yet reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# -- snooze ------------------------------------------------------------------------------


class TestSnooze:
    def test_a_job_with_one_attempt_snoozed_three_times_still_runs_and_succeeds(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Snoozes spend no attempt: num_attempts=1 and three snoozes, then a success."""
        runs: list[int] = []

        def patient(payload: Any, ctx: JobContext) -> Any:
            runs.append(ctx.attempt)
            if len(runs) <= 3:
                raise Snooze(0.05)
            return {"runs": len(runs)}

        handle = make(config, "patient", patient, num_attempts=1).defer({})
        with running(Worker(config, event_handler=recorder, process_interval_ms=50)) as worker:
            assert handle.result(timeout=30) == {"runs": 4}
        assert runs == [1, 1, 1, 1]  # every run is attempt 1 of 1
        assert worker.stats.snoozed == 3 and worker.stats.failed == 0
        job = config.jobs.get(handle.id)
        assert (job.status, job.attempt, job.max_attempts, job.last_error) == (
            "succeeded",
            1,
            1,
            None,
        )
        assert log_of(db, config, handle.id) == [(1, "snoozed")] * 3 + [(1, "succeeded")]
        assert errors_of(db, config, handle.id, "snoozed") == ["snoozed for 0.05 s"] * 3
        snoozed = recorder.of_type(events.WorkerJobSnoozed)
        assert [(e.job_id, e.attempt, e.seconds) for e in snoozed] == [(handle.id, 1, 0.05)] * 3

    def test_an_async_job_returns_ctx_snooze_and_waits_that_long(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """``return ctx.snooze(s)`` from an async def: available again, due s seconds later."""
        runs: list[int] = []

        async def later(payload: Any, ctx: JobContext) -> Any:
            runs.append(ctx.attempt)
            await asyncio.sleep(0)
            if len(runs) == 1:
                return ctx.snooze(dt.timedelta(seconds=0.3))
            return "done"

        handle = make(config, "later", later).defer({})
        with running(Worker(config, event_handler=recorder, process_interval_ms=50)):
            (event,) = recorder.wait_for(events.WorkerJobSnoozed)
            row = db.execute(
                f"SELECT j.status::text, j.attempt, j.run_at - a.finished_at, j.run_at "
                f'FROM "{config.schema}".job j JOIN "{config.schema}".job_attempt a '
                "ON a.job_id = j.id WHERE j.id = %s",
                [handle.id],
            ).fetchone()
            assert row is not None and row[:2] == ("available", 0)  # attempt refunded
            assert row[2] >= dt.timedelta(seconds=0.3)  # due 0.3 s after the snooze
            assert (event.seconds, event.run_at) == (0.3, row[3])
            assert handle.result(timeout=30) == "done"
        assert log_of(db, config, handle.id) == [(1, "snoozed"), (1, "succeeded")]
        job = config.jobs.get(handle.id)
        assert job.started_at is not None and job.started_at >= event.run_at  # not run before

    def test_a_child_process_job_snoozes_by_raising_and_by_returning(
        self, config: Config, db: psycopg.Connection[Any], tmp_path: Path
    ) -> None:
        """Worker(processes=N): a snooze crosses the process boundary either way."""
        definition = make(
            config, "child-snooze", _child_jobs.snooze_twice_then_succeed, num_attempts=1
        )
        handle = definition.defer({"runs": str(tmp_path / "runs"), "seconds": 0.05})
        with running(
            Worker(config, processes=1, process_interval_ms=50), join_timeout=60
        ) as worker:
            result = handle.result(timeout=60)
        assert (result["runs"], result["attempt"]) == (3, 1)
        assert worker.stats.snoozed == 2
        assert log_of(db, config, handle.id) == [(1, "snoozed"), (1, "snoozed"), (1, "succeeded")]

    @pytest.mark.parametrize(
        "bad",
        [-1, math.nan, math.inf, "soon", 10**12],
        ids=["negative", "nan", "inf", "str", "huge"],
    )
    def test_a_bad_snooze_fails_the_attempt_with_a_clear_error(
        self, config: Config, db: psycopg.Connection[Any], bad: Any
    ) -> None:
        """A snooze the worker cannot honour is the job's failure: the attempt is spent."""

        def confused(payload: Any, ctx: JobContext) -> Any:
            return ctx.snooze(bad)

        handle = make(config, "confused", confused, num_attempts=1).defer({})
        with running(Worker(config, process_interval_ms=50)):
            wait_until(lambda: config.jobs.get(handle.id).status == "failed")
        job = config.jobs.get(handle.id)
        assert job.last_error is not None
        assert job.last_error.startswith(
            "ConfigurationError: Snooze seconds: must be a number from 0 to 315360000"
        ), job.last_error
        assert log_of(db, config, handle.id) == [(1, "failed")]

    def test_drain_counts_snoozes_and_with_scheduled_runs_the_job_again(
        self, config: Config
    ) -> None:
        """drain leaves a snoozed job for later; with_scheduled runs it again at once."""
        runs: list[int] = []

        def sleepy(payload: Any) -> str:
            runs.append(1)
            if len(runs) == 1:
                raise Snooze(3600)
            return "awake"

        handle = make(config, "sleepy", sleepy, num_attempts=1).defer({})
        first = drain(config)
        assert first == DrainResult(snoozed=1, scheduled=1)
        assert first.snoozed_ids == (handle.id,) and first.retried_ids == ()
        assert first.errors == ()
        assert [(a.outcome, a.status) for a in first.attempts] == [("snoozed", "available")]
        assert first.attempts[0].retry_at is not None
        second = drain(config, with_scheduled=True)
        assert second == DrainResult(succeeded=1)
        assert handle.result(timeout=0) == "awake"
        assert [(a.attempt, a.outcome) for a in config.jobs.get(handle.id).attempts or ()] == [
            (1, "snoozed"),
            (1, "succeeded"),
        ]

    def test_inline_leaves_a_snoozed_job_in_the_queue(self, config: Config) -> None:
        """inline runs the job once; its snooze leaves it available, not run again."""
        runs: list[int] = []

        def sleepy(payload: Any) -> str:
            runs.append(1)
            if len(runs) == 1:
                raise Snooze(60)
            return "awake"

        definition = make(config, "sleepy-inline", sleepy)
        with inline(config) as block:
            handle = definition.defer({})
            assert handle.status() == "scheduled"  # available, its run_at ahead
            assert block.pending == ()
        assert runs == [1]
        assert [(a.outcome, a.status) for a in block.attempts] == [("snoozed", "available")]
        assert drain(config, with_scheduled=True) == DrainResult(succeeded=1)
        assert handle.result(timeout=0) == "awake"


# -- cancel --------------------------------------------------------------------------------


class TestCancelRunning:
    def test_a_running_async_job_is_cancelled_and_not_retried(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """cancel(): the worker cancels the task, logs nothing more, frees the slot."""
        started = threading.Event()
        outcome: list[str] = []

        async def forever(payload: Any) -> None:
            started.set()
            try:
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                outcome.append("task cancelled")
                raise

        slow = make(config, "forever", forever, num_attempts=3, lock_interval_ms=60_000)
        quick = make(config, "quick", lambda payload: "next")
        handle = slow.defer({})
        # No heartbeat within the deadline: the notification alone must stop it.
        with running(
            Worker(
                config, event_handler=recorder, process_interval_ms=50, **NO_HEARTBEAT
            )  # concurrency 1
        ) as worker:
            assert started.wait(10)
            listening(worker)
            assert config.jobs.cancel(handle.id).status == "cancelled"
            (event,) = recorder.wait_for(events.WorkerJobCancelled, timeout=CANCEL_DEADLINE_S)
            assert (event.job_id, event.attempt) == (handle.id, 1)
            # The slot is free again: the next job runs on this worker of concurrency 1.
            assert quick.defer({}).result(timeout=30) == "next"
            assert worker.stats.cancelled == 1 and worker.stats.fenced == 0
        assert outcome == ["task cancelled"]
        job = config.jobs.get(handle.id)
        assert (job.status, job.attempt) == ("cancelled", 1)
        assert [(a.attempt, a.outcome) for a in job.attempts or ()] == [(1, "cancelled")]
        assert log_of(db, config, handle.id) == [(1, "cancelled")]
        assert not recorder.of_type(events.WorkerJobFailed)

    def test_a_running_def_job_sees_should_stop_and_returns_early(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """A sync function polls ctx.should_stop; its return value is discarded."""
        started = threading.Event()
        seen: list[bool] = []

        def polling(payload: Any, ctx: JobContext) -> str:
            started.set()
            while not ctx.should_stop:
                threading.Event().wait(0.01)
            seen.append(ctx.should_stop)
            return "stopped early"

        handle = make(config, "polling", polling, lock_interval_ms=60_000).defer({})
        worker = Worker(config, event_handler=recorder, process_interval_ms=50, **NO_HEARTBEAT)
        with running(worker):
            assert started.wait(10)
            listening(worker)
            config.jobs.cancel(handle.id)
            recorder.wait_for(events.WorkerJobCancelled, timeout=CANCEL_DEADLINE_S)
            assert worker.stats.fenced == 0 and worker.stats.succeeded == 0
        assert seen == [True]
        job = config.jobs.get(handle.id)
        assert (job.status, job.result) == ("cancelled", None)

    def test_a_running_child_process_job_is_terminated_and_the_child_replaced(
        self, config: Config, recorder: EventRecorder, tmp_path: Path
    ) -> None:
        """Worker(processes=N): the child running the cancelled job is terminated."""
        pid_file = tmp_path / "pid"
        stuck = make(config, "stuck", _child_jobs.sleep_for_ever, num_attempts=3)
        handle = stuck.defer({"pid_file": str(pid_file)})
        with running(
            Worker(config, processes=1, event_handler=recorder, process_interval_ms=50),
            join_timeout=60,
        ) as worker:
            wait_until(pid_file.exists, timeout=60)
            pid = int(wait_until(pid_file.read_text, timeout=10))
            config.jobs.cancel(handle.id)
            recorder.wait_for(events.WorkerJobCancelled, timeout=CANCEL_DEADLINE_S)
            wait_until(lambda: process_gone(pid), timeout=CANCEL_DEADLINE_S)
            # A new child runs the next job.
            pid_file.unlink()
            other = stuck.defer({"pid_file": str(pid_file)})
            wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=60)
            assert int(pid_file.read_text()) != pid
            config.jobs.cancel(other.id)
            recorder.wait_for(events.WorkerJobCancelled, count=2, timeout=CANCEL_DEADLINE_S)
            assert worker.stats.cancelled == 2
        assert config.jobs.get(handle.id).status == "cancelled"

    def test_a_worker_without_listen_learns_of_the_cancel_from_its_heartbeat(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """listen_notify=False: no notification reaches it, the heartbeat does."""
        started = threading.Event()

        async def forever(payload: Any) -> None:
            started.set()
            await asyncio.sleep(600)

        handle = make(config, "forever-polled", forever).defer({})
        worker = Worker(
            config,
            event_handler=recorder,
            listen_notify=False,
            process_interval_ms=50,
            heartbeat_interval_ms=100,
        )
        with running(worker):
            assert started.wait(10)
            config.jobs.cancel(handle.id)
            (event,) = recorder.wait_for(events.WorkerJobCancelled, timeout=CANCEL_DEADLINE_S)
            assert event.job_id == handle.id
        assert worker._listener is None  # it had no LISTEN connection to be told on
        assert config.jobs.get(handle.id).status == "cancelled"

    def test_a_cancel_for_another_worker_leaves_this_ones_job_running(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """Two workers: the cancel stops the attempt of the one that runs the job only."""
        started = threading.Event()
        release = threading.Event()

        async def until_released(payload: Any) -> str:
            started.set()
            await asyncio.to_thread(release.wait, 30)
            return "finished"

        definition = make(config, "pair", until_released)
        first = definition.defer({})
        with running(Worker(config, event_handler=recorder, process_interval_ms=50)):
            assert started.wait(10)
            started.clear()
            second = definition.defer({})
            with running(Worker(config, event_handler=recorder, process_interval_ms=50)):
                assert started.wait(10)
                config.jobs.cancel(second.id)
                recorder.wait_for(events.WorkerJobCancelled, timeout=CANCEL_DEADLINE_S)
                release.set()
                assert first.result(timeout=30) == "finished"
        assert [e.job_id for e in recorder.of_type(events.WorkerJobCancelled)] == [second.id]


class TestCancelNotRunning:
    def test_a_queued_job_is_cancelled_as_before_and_a_second_cancel_is_refused(
        self, config: Config
    ) -> None:
        """Cancel of an available job: cancelled, no attempt; again: one clear error."""
        handle = make(config, "queued", lambda payload: None).defer({})
        job = config.jobs.cancel(handle.id)
        assert (job.status, job.attempt, job.attempts) == ("cancelled", 0, None)
        assert config.jobs.get(handle.id).attempts == ()
        with pytest.raises(JobStateError) as refused:
            config.jobs.cancel(handle.id)
        assert str(refused.value) == f"cannot cancel job {handle.id}: it was already cancelled"
        with pytest.raises(UnknownJobError, match=r"^unknown job id\(s\): 999999$"):
            config.jobs.cancel(999_999)
        with pytest.raises(ConfigurationError):
            config.jobs.cancel(0)


class TestFinishAfterCancel:
    def test_a_finish_written_before_the_worker_knew_of_the_cancel_is_refused(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The race the notice cannot close: the attempt's finish reaches the database after
        the cancel. The fence refuses it; the job stays cancelled, its log says so once."""
        handle = make(config, "raced", lambda payload: None).defer({})
        (claimed,) = claim(db, config, limit=1)
        assert claimed[0] == handle.id
        config.jobs.cancel(handle.id)
        assert finish(db, config, claimed, "succeeded", '"late"') == []
        job = config.jobs.get(handle.id)
        assert job.status == "cancelled"
        assert job.result is None
        assert [outcome for _, outcome in log_of(db, config, handle.id)] == ["cancelled"]
