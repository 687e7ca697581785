"""``attempt_timeout_ms`` against a real PostgreSQL: one attempt cut short.

An ``async def`` attempt past its limit is cancelled; a ``def`` attempt cannot
be killed, so it is recorded as ``timed_out`` and ``ctx.should_stop`` turns
true. Either way the attempt log says ``timed_out`` and the job is retried
while attempts remain, then failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from typing import Any

import psycopg
import pytest

from orchestra import Config, ConfigurationError, JobContext, JobDefinition, Worker, events
from orchestra.errors import JobFailed
from orchestra.testing import EventRecorder, wait_until
from tests._running import running


def attempts(db: psycopg.Connection[Any], config: Config, job_id: int) -> list[tuple[int, str]]:
    """The job's attempt log as (attempt, outcome), in order."""
    return [
        (int(r[0]), str(r[1]))
        for r in db.execute(
            f'SELECT attempt, outcome FROM "{config.schema}".all_job_attempts WHERE job_id = %s ORDER BY attempt',
            [job_id],
        ).fetchall()
    ]


def job_row(db: psycopg.Connection[Any], config: Config, job_id: int) -> tuple[Any, ...]:
    """(status, attempt, result, last_error) of a job."""
    row = db.execute(
        f'SELECT status::text, attempt, result, last_error FROM "{config.schema}".all_jobs WHERE id = %s',
        [job_id],
    ).fetchone()
    assert row is not None
    return tuple(row)


class TestAsyncAttempts:
    def test_async_attempt_past_its_limit_is_cancelled_retried_then_failed(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """An async attempt running past attempt_timeout_ms is cancelled and logged timed_out; retried while attempts remain, then failed."""
        cancelled: list[int] = []

        async def hang(payload: Any, ctx: JobContext) -> None:
            try:
                await asyncio.sleep(3600)  # cut by the worker
            except asyncio.CancelledError:
                cancelled.append(ctx.attempt)
                raise

        handle = JobDefinition(
            config,
            name="hang",
            job_function=hang,
            attempt_timeout_ms=dt.timedelta(milliseconds=200),
            num_attempts=2,
            backoff="none",
        ).defer({})
        with running(Worker(config, event_handler=recorder)):
            failures = recorder.wait_for(events.WorkerJobFailed, count=2, timeout=20)
        assert cancelled == [1, 2]
        assert [(f.attempt, f.will_retry) for f in failures] == [(1, True), (2, False)]
        assert all("AttemptTimeout" in f.error for f in failures)
        assert attempts(db, config, handle.id) == [(1, "timed_out"), (2, "timed_out")]
        status, attempt, result, last_error = job_row(db, config, handle.id)
        assert (status, attempt, result) == ("failed", 2, None)
        assert "attempt_timeout_ms (200 ms)" in last_error
        with pytest.raises(JobFailed) as info:
            handle.result(timeout=0)
        assert info.value.error == last_error

    def test_async_retry_within_the_limit_succeeds(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A timed-out first attempt is followed by a second attempt that finishes in time and succeeds."""

        async def slow_then_fast(payload: Any, ctx: JobContext) -> str:
            if ctx.attempt == 1:
                await asyncio.sleep(3600)  # cut by the worker
            return f"attempt {ctx.attempt}"

        handle = JobDefinition(
            config,
            name="slow-then-fast",
            job_function=slow_then_fast,
            attempt_timeout_ms=200,
            num_attempts=3,
            backoff="none",
        ).defer({})
        with running(Worker(config, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, timeout=20)
        assert attempts(db, config, handle.id) == [(1, "timed_out"), (2, "succeeded")]
        assert handle.result(timeout=0) == "attempt 2"

    def test_job_within_its_limit_is_not_cut(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A job that finishes before attempt_timeout_ms succeeds normally, sync or async."""

        async def fast_async(payload: Any) -> str:
            await asyncio.sleep(0)
            return "async"

        a = JobDefinition(
            config, name="fast-async", job_function=fast_async, attempt_timeout_ms=10_000
        ).defer({})
        s = JobDefinition(
            config, name="fast-sync", job_function=lambda p: "sync", attempt_timeout_ms=10_000
        ).defer({})
        with running(Worker(config, concurrency=2, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, count=2, timeout=20)
        assert attempts(db, config, a.id) == [(1, "succeeded")]
        assert attempts(db, config, s.id) == [(1, "succeeded")]
        assert (a.result(timeout=0), s.result(timeout=0)) == ("async", "sync")


class TestSyncAttempts:
    def test_sync_attempt_past_its_limit_is_timed_out_and_sees_should_stop(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A def attempt past its limit is logged timed_out, the job failed, and the function sees ctx.should_stop turn true."""
        seen: dict[str, Any] = {}
        returned = threading.Event()

        def loop_until_told(payload: Any, ctx: JobContext) -> str:
            seen["at_start"] = ctx.should_stop
            tick = threading.Event()
            deadline = time.monotonic() + 20
            while not ctx.should_stop and time.monotonic() < deadline:
                tick.wait(0.01)  # a slice of the job's own work
            seen["at_end"] = ctx.should_stop
            returned.set()
            return "late"

        handle = JobDefinition(
            config, name="looping", job_function=loop_until_told, attempt_timeout_ms=200
        ).defer({})
        with running(Worker(config, event_handler=recorder)):
            failed = recorder.wait_for(events.WorkerJobFailed, timeout=20)[0]
            assert returned.wait(20), "the function never saw should_stop"
        assert seen == {"at_start": False, "at_end": True}
        assert failed.will_retry is False and "AttemptTimeout" in failed.error
        assert attempts(db, config, handle.id) == [(1, "timed_out")]
        status, attempt, result, _ = job_row(db, config, handle.id)
        assert (status, attempt, result) == ("failed", 1, None)  # the late return is not stored

    def test_sync_attempt_timed_out_is_retried(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A def attempt cut by its limit is retried while attempts remain; a quick retry succeeds."""

        def first_slow(payload: Any, ctx: JobContext) -> int:
            if ctx.attempt == 1:
                tick = threading.Event()
                while not ctx.should_stop:
                    tick.wait(0.01)  # a slice of the job's own work
            return ctx.attempt

        handle = JobDefinition(
            config,
            name="first-slow",
            job_function=first_slow,
            attempt_timeout_ms=200,
            num_attempts=2,
            backoff="none",
        ).defer({})
        with running(Worker(config, concurrency=2, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, timeout=20)
        assert attempts(db, config, handle.id) == [(1, "timed_out"), (2, "succeeded")]
        assert handle.result(timeout=0) == 2

    def test_job_claimed_after_a_stuck_sync_attempt_is_not_charged_without_running(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """With concurrency 1, a job claimed while a timed-out def attempt still holds the thread must not lose an attempt it never ran."""
        release = threading.Event()
        called: list[str] = []
        contexts: list[JobContext] = []

        def stuck(payload: Any, ctx: JobContext) -> None:
            called.append("stuck")
            contexts.append(ctx)
            release.wait(20)  # ignores should_stop, as blocking I/O would

        def quick(payload: Any) -> str:
            called.append("quick")
            return "ok"

        JobDefinition(config, name="stuck", job_function=stuck, attempt_timeout_ms=300).defer(
            {}, priority=5
        )
        later = JobDefinition(
            config, name="quick", job_function=quick, attempt_timeout_ms=300
        ).defer({})

        def quick_finished(event: events.Event) -> bool:
            return (
                isinstance(event, events.WorkerJobSucceeded | events.WorkerJobFailed)
                and event.definition == "quick"
            )

        with running(Worker(config, concurrency=1, event_handler=recorder)):
            # The attempt is past its timeout: it was told to stop.
            wait_until(lambda: bool(contexts) and contexts[0].should_stop, timeout=10)
            with contextlib.suppress(TimeoutError):
                # The stuck thread holds on for 1.5 s more, or until "quick" is done with.
                recorder.wait_for(events.Event, quick_finished, timeout=1.5)
            release.set()
            recorder.wait_for(events.Event, quick_finished, timeout=20)
        assert attempts(db, config, later.id) == [(1, "succeeded")], called
        assert called == ["stuck", "quick"]

    def test_timed_out_sync_attempt_still_running_keeps_its_key(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """The next job of a key must not start while the function of a timed-out def attempt of that key still runs."""
        release = threading.Event()
        lock = threading.Lock()
        state = {"now": 0, "peak": 0}

        def enter() -> None:
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])

        def leave() -> None:
            with lock:
                state["now"] -= 1

        contexts: list[JobContext] = []

        def stuck(payload: Any, ctx: JobContext) -> None:
            contexts.append(ctx)
            enter()
            try:
                release.wait(20)  # ignores should_stop, as blocking I/O would
            finally:
                leave()

        def after(payload: Any) -> None:
            enter()
            leave()

        JobDefinition(config, name="stuck", job_function=stuck, attempt_timeout_ms=300).defer(
            {}, priority=5, resource_key="device"
        )
        JobDefinition(config, name="after", job_function=after).defer({}, resource_key="device")
        with running(Worker(config, concurrency=2, event_handler=recorder)):
            wait_until(lambda: bool(contexts) and contexts[0].should_stop, timeout=10)
            with contextlib.suppress(TimeoutError):
                # Within 2 s "after" has started alongside the stuck function.
                recorder.wait_for(
                    events.WorkerJobSucceeded, lambda e: e.definition == "after", timeout=2
                )
            release.set()
            recorder.wait_for(
                events.WorkerJobSucceeded, lambda e: e.definition == "after", timeout=20
            )
        assert state["peak"] == 1


class TestValidation:
    @pytest.mark.parametrize(
        "value",
        [0, -1, dt.timedelta(0), dt.timedelta(milliseconds=-5), "100", 1.5, True],
        ids=["zero", "negative", "zero-timedelta", "negative-timedelta", "str", "float", "bool"],
    )
    def test_bad_attempt_timeout_is_refused_naming_it(
        self, config: Config, db: psycopg.Connection[Any], value: Any
    ) -> None:
        """attempt_timeout_ms of 0, negative or of a wrong type raises ConfigurationError naming it; nothing is registered or written."""
        with pytest.raises(ConfigurationError) as info:
            JobDefinition(config, name="bad", job_function=lambda p: None, attempt_timeout_ms=value)
        assert info.value.argument == "attempt_timeout_ms"
        assert "bad" not in config.definitions
        assert db.execute(f'SELECT count(*) FROM "{config.schema}".job_definition').fetchone() == (
            0,
        )

    def test_attempt_timeout_accepts_int_timedelta_and_none(self, config: Config) -> None:
        """attempt_timeout_ms takes milliseconds, a timedelta, or None (no limit)."""
        as_int = JobDefinition(config, name="a", job_function=lambda p: None, attempt_timeout_ms=1)
        as_delta = JobDefinition(
            config,
            name="b",
            job_function=lambda p: None,
            attempt_timeout_ms=dt.timedelta(seconds=2),
        )
        unlimited = JobDefinition(config, name="c", job_function=lambda p: None)
        assert (as_int.attempt_timeout_ms, as_delta.attempt_timeout_ms) == (1, 2_000)
        assert unlimited.attempt_timeout_ms is None
