"""A misbehaving job fails alone: whatever it raises or carries, its attempt ends and
the worker, and every other job, carries on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition, Worker, events
from orchestra.testing import EventRecorder
from tests._running import running


class JobOwnBaseError(BaseException):
    """A BaseException subclass of the job's own, as libraries sometimes define."""


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


class UnprintableBaseError(BaseException):
    def __str__(self) -> str:
        raise JobOwnBaseError("even the error of __str__ is a BaseException")

    def __repr__(self) -> str:
        raise RuntimeError("and so is __repr__")


def attempt_rows(db: psycopg.Connection[Any], config: Config, job_id: int) -> list[tuple[Any, ...]]:
    return db.execute(
        f'SELECT attempt, outcome, error FROM "{config.schema}".all_job_attempts '
        "WHERE job_id = %s ORDER BY attempt",
        [job_id],
    ).fetchall()


def job_status(db: psycopg.Connection[Any], config: Config, job_id: int) -> str:
    row = db.execute(
        f'SELECT status::text FROM "{config.schema}".all_jobs WHERE id = %s', [job_id]
    ).fetchone()
    assert row is not None
    return str(row[0])


def raising(exc: BaseException, *, is_async: bool) -> Callable[..., Any]:
    if is_async:

        async def async_job(payload: Any) -> None:
            await asyncio.sleep(0)
            raise exc

        return async_job

    def sync_job(payload: Any) -> None:
        raise exc

    return sync_job


RAISED: list[tuple[str, Callable[[], BaseException], str]] = [
    ("own BaseException", lambda: JobOwnBaseError("boom"), "JobOwnBaseError: boom"),
    ("KeyboardInterrupt", lambda: KeyboardInterrupt("ctrl-c"), "KeyboardInterrupt: ctrl-c"),
    ("SystemExit", lambda: SystemExit(3), "SystemExit: 3"),
    ("GeneratorExit", GeneratorExit, "GeneratorExit"),
    ("CancelledError", lambda: asyncio.CancelledError("mine"), "CancelledError: mine"),
    (
        "exception whose __str__ raises",
        UnprintableError,
        "UnprintableError: <str() of the exception raised>",
    ),
    (
        "BaseException whose __str__ and __repr__ raise",
        UnprintableBaseError,
        "UnprintableBaseError: <str() of the exception raised>",
    ),
]


@pytest.mark.parametrize("is_async", [True, False], ids=["async-def", "def"])
@pytest.mark.parametrize(("label", "make_exc", "error"), RAISED, ids=[r[0] for r in RAISED])
def test_whatever_a_job_raises_fails_its_attempt_and_the_worker_carries_on(
    config: Config,
    db: psycopg.Connection[Any],
    recorder: EventRecorder,
    label: str,
    make_exc: Callable[[], BaseException],
    error: str,
    is_async: bool,
) -> None:
    bad = JobDefinition(
        config,
        name="bad",
        job_function=raising(make_exc(), is_async=is_async),
        num_attempts=2,
        backoff="none",
    )
    good = JobDefinition(config, name="good", job_function=lambda payload: payload["n"])
    bad_handle = bad.defer({})
    worker = Worker(config, concurrency=4, event_handler=recorder, name="carries-on")
    with running(worker):
        failures = recorder.wait_for(events.WorkerJobFailed, count=2)
        # The worker is alive and well: a job deferred afterwards runs.
        good_handle = good.defer({"n": 7})
        assert good_handle.result(timeout=30) == 7
    assert worker.join(timeout=0)  # stopped, and not of an error
    assert [f.error for f in failures] == [error, error]
    assert [f.will_retry for f in failures] == [True, False]
    assert job_status(db, config, bad_handle.id) == "failed"
    assert attempt_rows(db, config, bad_handle.id) == [(1, "failed", error), (2, "failed", error)]


def test_an_async_job_raising_its_own_base_exception_does_not_hold_up_the_stop(
    config: Config, recorder: EventRecorder
) -> None:
    """A worker whose job raised stops at once: nothing is left running to wait for."""
    bad = JobDefinition(
        config, name="bad", job_function=raising(JobOwnBaseError("x"), is_async=True)
    )
    bad.defer({})
    worker = Worker(config, event_handler=recorder, shutdown_grace_ms=600_000)
    with running(worker):
        recorder.wait_for(events.WorkerJobFailed)
    assert worker.join(timeout=0)  # stopped, and not of an error
    stopped = recorder.of_type(events.DaemonStopped)
    assert [s.handed_back for s in stopped] == [0]


def test_a_payload_too_deep_to_decode_fails_alone_and_its_batch_runs(
    config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
) -> None:
    """A valid jsonb payload nested beyond Python's decoder fails its own job with a
    clear error; the jobs claimed in the same statement run."""
    seen: list[int] = []
    echo = JobDefinition(
        config, name="echo", job_function=lambda payload: seen.append(1), num_attempts=1
    )
    handles = echo.defer_many([{"n": n} for n in range(20)])
    deep = handles[7]
    # The producer role may insert any valid jsonb: 5,000 levels is valid.
    db.execute(
        f'UPDATE "{config.schema}".job SET payload = %s::jsonb WHERE id = %s',
        ["[" * 5000 + "]" * 5000, deep.id],
    )
    with running(Worker(config, concurrency=25, event_handler=recorder)):
        recorder.wait_for(events.WorkerJobSucceeded, count=19)
        invalid = recorder.wait_for(events.WorkerJobPayloadInvalid)
    assert len(seen) == 19
    assert invalid[0].job_id == deep.id
    assert invalid[0].error == (
        "PayloadError: stored payload cannot be read: "
        "the stored JSON is nested too deeply for Python's JSON decoder"
    )
    claims = [e.job_id for e in recorder.of_type(events.WorkerJobClaimed)]
    assert sorted(claims) == sorted(h.id for h in handles)
    statuses = {h.id: job_status(db, config, h.id) for h in handles}
    assert statuses.pop(deep.id) == "failed"
    assert set(statuses.values()) == {"succeeded"}
