"""The executor alone: every attempt ends in exactly one Finish, however it runs and ends.

No database: a Config is only built (it connects on first use), and the
executor is handed claimed rows directly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from orchestra import Config, JobContext, JobDefinition
from orchestra._worker._attempts import Claimed, Finish
from orchestra._worker._executor import Executor

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
_ids = iter(range(1, 1_000_000))


def claimed(definition: JobDefinition[Any]) -> Claimed:
    return Claimed(
        id=next(_ids),
        definition=definition.name,
        payload="{}",
        attempt=1,
        max_attempts=3,
        token=uuid.uuid4(),
        started_at=NOW,
        run_at=NOW,
        priority=0,
        trace_context=None,
    )


def define(function: Callable[..., Any], **options: Any) -> JobDefinition[Any]:
    config = Config("postgresql://nobody@127.0.0.1:1/unused")
    return JobDefinition(config, name="job", job_function=function, **options)


async def run_attempts(
    definition: JobDefinition[Any], count: int, *, interrupt_at_once: bool = False
) -> list[Finish]:
    """Run ``count`` attempts; return their finishes once all arrived (or were interrupted)."""
    finishes: list[Finish] = []
    arrived = asyncio.Event()

    def on_finish(finish: Finish) -> None:
        finishes.append(finish)
        if len(finishes) >= count:
            arrived.set()

    executor = Executor(
        concurrency=count,
        processes=None,
        stop=threading.Event(),
        max_payload_bytes=1_000_000,
        on_finish=on_finish,
        name="test",
    )
    await executor.start()
    jobs = [claimed(definition) for _ in range(count)]
    for job in jobs:
        executor.run(job, definition)
    if interrupt_at_once:
        await executor.interrupt()
    else:
        await asyncio.wait_for(arrived.wait(), 30)
        await executor.interrupt()  # nothing left: it must report nothing more
    await executor.close()
    assert sorted(f.job_id for f in finishes) == sorted(job.id for job in jobs)
    return finishes


def test_a_def_attempt_ends_once_with_its_return_value() -> None:
    finishes = asyncio.run(run_attempts(define(lambda payload: {"ok": True}), 3))
    assert [(f.outcome, f.result) for f in finishes] == [("succeeded", '{"ok":true}')] * 3


def test_an_async_attempt_that_raises_fails_once_with_its_error() -> None:
    async def boom(payload: Any) -> None:
        raise ValueError("no")

    (finish,) = asyncio.run(run_attempts(define(boom), 1))
    assert (finish.outcome, finish.error) == ("failed", "ValueError: no")
    assert finish.traceback is not None and "ValueError: no" in finish.traceback


def test_async_attempts_interrupted_before_their_first_step_still_end_once() -> None:
    async def slow(payload: Any) -> None:
        await asyncio.sleep(60)

    finishes = asyncio.run(run_attempts(define(slow), 4, interrupt_at_once=True))
    assert [f.outcome for f in finishes] == ["interrupted"] * 4


def test_a_def_attempt_interrupted_by_the_stop_ends_once_and_its_late_return_is_dropped() -> None:
    release = threading.Event()

    def stuck(payload: Any) -> str:
        release.wait(30)
        return "late"

    async def scenario() -> list[Finish]:
        try:
            return await run_attempts(define(stuck), 1, interrupt_at_once=True)
        finally:
            release.set()

    (finish,) = asyncio.run(scenario())
    assert finish.outcome == "interrupted"


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_an_attempt_past_its_timeout_ends_once_as_timed_out(kind: str) -> None:
    def cooperative(payload: Any, ctx: JobContext) -> None:
        while not ctx.should_stop:  # a thread cannot be killed: it is asked to stop
            threading.Event().wait(0.01)

    async def sleeper(payload: Any) -> None:
        await asyncio.sleep(60)

    function = cooperative if kind == "def" else sleeper
    (finish,) = asyncio.run(run_attempts(define(function, attempt_timeout_ms=50), 1))
    assert finish.outcome == "timed_out"
    assert finish.error is not None and "attempt_timeout_ms" in finish.error
