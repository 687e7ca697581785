"""Lifecycle callbacks on_success, on_failure and on_attempt.

Each fires once per qualifying attempt, in the worker process, after the
attempt's end is committed, with the updated job read back from the database.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from orchestra import Config, Job, JobContext, JobDefinition, JobFailed, Worker
from tests._running import running


class Calls:
    """Records callback invocations from the worker's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Job]] = []

    def hook(self, name: str) -> Any:
        def record(job: Job) -> None:
            with self.lock:
                self.calls.append((name, job))

        return record

    def names(self) -> list[tuple[str, int, str]]:
        with self.lock:
            return [(name, job.attempt, job.status) for name, job in self.calls]


def test_success_after_retries_fires_on_attempt_each_time_and_on_success_once(
    config: Config,
) -> None:
    """Two failed attempts, then success: on_attempt x3, on_success x1, on_failure never."""
    calls = Calls()

    def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return "done"

    definition = JobDefinition(
        config,
        name="flaky",
        job_function=flaky,
        num_attempts=3,
        backoff="none",
        on_success=calls.hook("success"),
        on_failure=calls.hook("failure"),
        on_attempt=calls.hook("attempt"),
    )
    handle = definition.defer({"x": 1})
    with running(Worker(config, process_interval_ms=50)):
        assert handle.result(timeout=30) == "done"
    # The slot is freed only after the callbacks ran, and the worker stopped
    # after that: every call is recorded by now.
    assert calls.names() == [
        ("attempt", 1, "available"),
        ("attempt", 2, "available"),
        ("attempt", 3, "succeeded"),
        ("success", 3, "succeeded"),
    ]
    success_job = calls.calls[-1][1]
    assert success_job.id == handle.id
    assert success_job.result == "done"
    assert success_job.attempts is not None
    assert [a.outcome for a in success_job.attempts] == ["failed", "failed", "succeeded"]


def test_on_failure_fires_only_after_the_final_attempt(config: Config) -> None:
    """Every attempt fails: on_failure once, after attempt 2 of 2, with the last error."""
    calls = Calls()

    def broken(payload: dict[str, Any]) -> None:
        raise ValueError("always")

    definition = JobDefinition(
        config,
        name="broken",
        job_function=broken,
        num_attempts=2,
        backoff="none",
        on_failure=calls.hook("failure"),
        on_attempt=calls.hook("attempt"),
    )
    handle = definition.defer({})
    with running(Worker(config, process_interval_ms=50)), pytest.raises(JobFailed):
        handle.result(timeout=30)
    assert calls.names() == [
        ("attempt", 1, "available"),
        ("attempt", 2, "failed"),
        ("failure", 2, "failed"),
    ]
    assert calls.calls[-1][1].last_error == "ValueError: always"


def test_async_callbacks_and_a_raising_callback_change_nothing(config: Config) -> None:
    """An async callback is awaited; one that raises is logged, the job and worker go on."""
    seen: list[int] = []

    async def remember(job: Job) -> None:
        await asyncio.sleep(0)
        seen.append(job.id)

    def explode(job: Job) -> None:
        raise RuntimeError("callback bug")

    definition = JobDefinition(
        config,
        name="fine",
        job_function=lambda payload: payload["n"],
        on_success=remember,
        on_attempt=explode,
    )
    with running(Worker(config, process_interval_ms=50)):
        handles = [definition.defer({"n": n}) for n in range(3)]
        assert [h.result(timeout=30) for h in handles] == [0, 1, 2]
    assert sorted(seen) == sorted(h.id for h in handles)
    assert {h.status() for h in handles} == {"succeeded"}


def test_callbacks_must_be_callable(config: Config) -> None:
    """A callback that is not callable is refused at construction, naming the argument."""
    from orchestra import ConfigurationError

    with pytest.raises(ConfigurationError, match="on_success"):
        JobDefinition(config, name="x", job_function=lambda: None, on_success="nope")  # type: ignore[call-overload]
