"""Snooze and cancel without a database: the Snooze value, the executor's finishes,
the lane's view of a cancelled finish, the cancel notice a worker reads.

The database side (the refunded attempt, the attempt log, the notification and
the heartbeat) is tests/integration/test_worker_snooze_and_cancel.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import pickle
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from orchestra import Config, ConfigurationError, JobContext, JobDefinition, OrchestraError, Snooze
from orchestra._worker import _lanes
from orchestra._worker._attempts import Claimed, Finish, finish
from orchestra._worker._executor import Executor
from orchestra._worker._listener import parse_cancel

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
_ids = iter(range(1, 1_000_000))


def claimed() -> Claimed:
    return Claimed(
        id=next(_ids),
        definition="job",
        payload="{}",
        attempt=1,
        max_attempts=1,
        token=uuid.uuid4(),
        started_at=NOW,
        run_at=NOW,
        priority=0,
        trace_context=None,
    )


def define(function: Callable[..., Any], **options: Any) -> JobDefinition[Any]:
    config = Config("postgresql://nobody@127.0.0.1:1/unused")
    return JobDefinition(config, name="job", job_function=function, **options)


async def run_one(
    definition: JobDefinition[Any],
    *,
    then: Callable[[Executor, Claimed], Any] | None = None,
) -> Finish:
    """Run one attempt; ``then(executor, job)`` right after it started. Its Finish."""
    finishes: list[Finish] = []
    arrived = asyncio.Event()

    def on_finish(f: Finish) -> None:
        finishes.append(f)
        arrived.set()

    executor = Executor(
        concurrency=1,
        processes=None,
        stop=threading.Event(),
        max_payload_bytes=1_000_000,
        on_finish=on_finish,
        name="test",
    )
    await executor.start()
    job = claimed()
    executor.run(job, definition)
    try:
        if then is not None:
            then(executor, job)
        await asyncio.wait_for(arrived.wait(), 30)
        await asyncio.sleep(0.01)  # a second report would arrive by now
    finally:
        await executor.interrupt()
        await executor.close()
    assert len(finishes) == 1, finishes
    return finishes[0]


# -- the Snooze value ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(30, 30.0), (0, 0.0), (0.25, 0.25), (dt.timedelta(minutes=2), 120.0)],
)
def test_snooze_takes_seconds_or_a_timedelta(given: Any, seconds: float) -> None:
    assert Snooze(given).seconds == seconds


@pytest.mark.parametrize(
    "bad",
    [-1, -0.001, math.nan, math.inf, "30", None, True, dt.timedelta(seconds=-1), 10**10],
)
def test_a_bad_snooze_raises_one_clear_line(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^Snooze seconds: must be a number from 0"):
        Snooze(bad)


def test_a_snooze_is_no_orchestra_error_and_pickles() -> None:
    snooze = Snooze(1.5)
    assert isinstance(snooze, Exception) and not isinstance(snooze, OrchestraError)
    assert str(snooze) == "snooze for 1.5 s"
    assert pickle.loads(pickle.dumps(snooze)).seconds == 1.5  # noqa: S301 (our own bytes)


# -- the executor's finishes -----------------------------------------------------------


def raise_snooze(payload: Any) -> None:
    raise Snooze(30)


def return_snooze(payload: Any, ctx: JobContext) -> Any:
    return ctx.snooze(dt.timedelta(seconds=2.5))


async def raise_snooze_async(payload: Any) -> None:
    raise Snooze(30)


async def return_snooze_async(payload: Any, ctx: JobContext) -> Any:
    return ctx.snooze(2.5)


@pytest.mark.parametrize(
    ("function", "delay_ms"),
    [
        (raise_snooze, 30_000),
        (return_snooze, 2_500),
        (raise_snooze_async, 30_000),
        (return_snooze_async, 2_500),
    ],
    ids=["def raises", "def returns", "async raises", "async returns"],
)
def test_a_function_that_snoozes_ends_its_attempt_as_snoozed(
    function: Callable[..., Any], delay_ms: int
) -> None:
    result = asyncio.run(run_one(define(function)))
    assert (result.outcome, result.retry_delay_ms) == ("snoozed", delay_ms)
    assert result.error == f"snoozed for {delay_ms / 1000:g} s"
    assert result.result is None and result.traceback is None


def test_a_bad_snooze_fails_the_attempt_with_its_reason() -> None:
    def bad(payload: Any, ctx: JobContext) -> Any:
        return ctx.snooze(-5)

    result = asyncio.run(run_one(define(bad)))
    assert result.outcome == "failed"
    assert result.error is not None and "Snooze seconds: must be a number" in result.error


def test_a_cancelled_async_attempt_ends_once_as_cancelled() -> None:
    async def forever(payload: Any) -> None:
        await asyncio.sleep(60)

    async def scenario() -> Finish:
        def cancel_soon(executor: Executor, job: Claimed) -> None:
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, executor.cancel, job.id, job.token)

        return await run_one(define(forever), then=cancel_soon)

    assert asyncio.run(scenario()).outcome == "cancelled"


def test_an_async_attempt_cancelled_before_its_first_step_ends_once_as_cancelled() -> None:
    async def forever(payload: Any) -> None:
        await asyncio.sleep(60)

    def cancel_now(executor: Executor, job: Claimed) -> None:
        assert executor.cancel(job.id, job.token)
        assert not executor.cancel(job.id, job.token)  # once is enough

    assert asyncio.run(run_one(define(forever), then=cancel_now)).outcome == "cancelled"


def test_an_async_attempt_that_swallows_the_cancel_still_ends_as_cancelled() -> None:
    async def stubborn(payload: Any) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "carried on"
        return "never"

    def cancel_soon(executor: Executor, job: Claimed) -> None:
        asyncio.get_running_loop().call_later(0.05, executor.cancel, job.id, job.token)

    assert asyncio.run(run_one(define(stubborn), then=cancel_soon)).outcome == "cancelled"


def test_a_cancelled_def_attempt_sees_should_stop_and_its_return_is_discarded() -> None:
    seen: list[bool] = []

    def cooperative(payload: Any, ctx: JobContext) -> str:
        while not ctx.should_stop:
            threading.Event().wait(0.01)
        seen.append(ctx.should_stop)
        return "stopped early"

    def cancel_soon(executor: Executor, job: Claimed) -> None:
        asyncio.get_running_loop().call_later(0.05, executor.cancel, job.id, job.token)

    result = asyncio.run(run_one(define(cooperative), then=cancel_soon))
    assert (result.outcome, result.result, seen) == ("cancelled", None, [True])


def test_a_cancel_with_another_attempts_token_changes_nothing() -> None:
    def quick(payload: Any) -> str:
        threading.Event().wait(0.05)
        return "done"

    def cancel_other(executor: Executor, job: Claimed) -> None:
        assert not executor.cancel(job.id, uuid.uuid4())
        assert not executor.cancel(job.id + 1_000_000, job.token)

    result = asyncio.run(run_one(define(quick), then=cancel_other))
    assert (result.outcome, result.result) == ("succeeded", '"done"')


# -- lanes -------------------------------------------------------------------------------


def test_a_cancelled_finish_is_not_written_and_counts_as_committed_cancelled() -> None:
    job = claimed()
    cancelled = finish(job, "cancelled")
    assert not cancelled.written
    _lanes.apply_committed([cancelled], [])
    assert cancelled.committed_status == "cancelled"


def test_a_snooze_whose_reply_was_lost_is_looked_up_as_available_after_its_snooze() -> None:
    job = claimed()  # max_attempts=1: a failure would end the job, a snooze does not
    snoozed = finish(job, "snoozed", retry_delay_ms=30_000)
    row = _lanes.recorded_row(snoozed, NOW)
    assert row == (job.id, "available", NOW + dt.timedelta(seconds=30))


# -- the cancel notice ---------------------------------------------------------------------


def test_a_cancel_notice_is_read_by_its_worker_only() -> None:
    token = uuid.uuid4()
    payload = f"cancel 12 345 {token}"
    assert parse_cancel(payload, 12) == (345, token)
    assert parse_cancel(payload, 1) is None  # "cancel 1 " is no prefix of "cancel 12 "
    assert parse_cancel(payload, 123) is None
    assert parse_cancel(payload, None) is None  # not registered yet
    assert parse_cancel("_default", 12) is None


def test_a_malformed_cancel_notice_is_ignored() -> None:
    assert parse_cancel("cancel 12 x y", 12) is None
    assert parse_cancel("cancel 12 345", 12) is None
