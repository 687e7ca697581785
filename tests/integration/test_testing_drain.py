"""orchestra.testing.drain: the runnable jobs run in the test's thread, as a worker runs them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import attrs
import pytest

from orchestra import Config, Job, JobContext, JobDefinition, JobFailed
from orchestra.errors import ConfigurationError, SchemaNotReadyError
from orchestra.testing import DrainResult, drain, drain_async


@attrs.frozen
class Order:
    sku: str
    quantity: int


def test_drain_runs_every_runnable_job_and_counts_the_outcomes(config: Config) -> None:
    """Successes and final failures are counted per attempt, results and errors are stored."""

    def price(order: Order) -> dict[str, int]:
        if order.quantity <= 0:
            raise ValueError("quantity must be positive")
        return {"total": order.quantity * 3}

    pricing = JobDefinition(config, name="price", job_function=price, payload_type=Order)
    good = pricing.defer(Order("tea", 2))
    bad = pricing.defer(Order("tea", 0))
    other = pricing.defer(Order("cake", 5))

    result = drain(config)

    assert result == DrainResult(succeeded=2, failed=1)
    assert result.succeeded_ids == (good.id, other.id)
    assert result.failed_ids == (bad.id,)
    assert result.errors == ("ValueError: quantity must be positive",)
    assert good.result(timeout=0) == {"total": 6}
    with pytest.raises(JobFailed, match="quantity must be positive"):
        bad.result(timeout=0)
    assert drain(config) == DrainResult()


def test_drain_runs_sync_jobs_in_the_calling_thread_in_worker_order(config: Config) -> None:
    """Highest priority first, then first deferred first; def functions run in this thread."""
    ran: list[tuple[str, str | None]] = []

    def record(payload: dict[str, str]) -> None:
        ran.append((payload["name"], threading.current_thread().name))

    step = JobDefinition(config, name="step", job_function=record)
    step.defer({"name": "low"}, priority=-5)
    step.defer({"name": "first"})
    step.defer({"name": "urgent"}, priority=10)
    step.defer({"name": "second"})

    drain(config)

    here = threading.current_thread().name
    assert ran == [("urgent", here), ("first", here), ("second", here), ("low", here)]


def test_retries_wait_for_their_backoff_unless_with_scheduled(config: Config) -> None:
    """A retry due later counts as retried and is left; with_scheduled runs it until
    the job has no attempt left, and the attempt log records every attempt."""

    def always_fails(payload: dict[str, Any], ctx: JobContext) -> None:
        raise RuntimeError(f"attempt {ctx.attempt} of {ctx.max_attempts}")

    failing = JobDefinition(
        config, name="fails", job_function=always_fails, num_attempts=3, backoff="fixed"
    )
    handle = failing.defer({})

    first = drain(config)
    assert first == DrainResult(retried=1, scheduled=1)
    assert first.retried_ids == (handle.id,)
    assert first.attempts[0].retry_at is not None
    assert handle.status() == "scheduled"  # available, its run_at ahead

    rest = drain(config, with_scheduled=True)
    assert rest == DrainResult(retried=1, failed=1)
    assert rest.errors == ("RuntimeError: attempt 2 of 3", "RuntimeError: attempt 3 of 3")
    job = config.jobs.get(handle)
    assert job.status == "failed"
    assert job.attempts is not None
    assert [(a.attempt, a.outcome, a.worker_name) for a in job.attempts] == [
        (1, "failed", "testing-worker"),
        (2, "failed", "testing-worker"),
        (3, "failed", "testing-worker"),
    ]


def test_retries_succeed_within_one_drain_with_scheduled(config: Config) -> None:
    """A job that fails twice and then succeeds: two retried attempts, one success."""

    def flaky(payload: dict[str, Any], ctx: JobContext) -> int:
        if ctx.attempt < 3:
            raise ConnectionError("try again")
        return ctx.attempt

    definition = JobDefinition(config, name="flaky", job_function=flaky, num_attempts=5)
    handle = definition.defer({})
    assert drain(config, with_scheduled=True) == DrainResult(retried=2, succeeded=1)
    assert handle.result(timeout=0) == 3


def test_callbacks_fire_once_per_attempt_after_it_is_recorded(config: Config) -> None:
    """on_attempt after each attempt, on_success or on_failure once, with the job read back."""
    calls: list[tuple[str, int, str]] = []

    def hook(name: str) -> Any:
        def record(job: Job) -> None:
            calls.append((name, job.attempt, job.status))

        return record

    def flaky(payload: dict[str, bool], ctx: JobContext) -> None:
        if payload["fail"] or ctx.attempt == 1:
            raise RuntimeError("no")

    definition = JobDefinition(
        config,
        name="called-back",
        job_function=flaky,
        num_attempts=2,
        backoff="none",
        on_attempt=hook("attempt"),
        on_success=hook("success"),
        on_failure=hook("failure"),
    )
    definition.defer({"fail": False})
    drain(config)
    assert calls == [
        ("attempt", 1, "available"),
        ("attempt", 2, "succeeded"),
        ("success", 2, "succeeded"),
    ]
    calls.clear()
    definition.defer({"fail": True})
    drain(config)
    assert calls == [
        ("attempt", 1, "available"),
        ("attempt", 2, "failed"),
        ("failure", 2, "failed"),
    ]


def test_async_callbacks_are_awaited(config: Config) -> None:
    """An async def callback runs to its end before the drain returns."""
    seen: list[str] = []

    async def on_success(job: Job) -> None:
        await asyncio.sleep(0)
        seen.append(job.result)

    definition = JobDefinition(
        config, name="async-callback", job_function=lambda: "ok", on_success=on_success
    )
    definition.defer()
    drain(config)
    assert seen == ["ok"]


def test_jobs_deferred_by_jobs_run_in_the_same_drain_unless_without_recursion(
    config: Config,
) -> None:
    """with_recursion (default) runs the jobs the drained jobs defer; without it they stay."""
    ran: list[int] = []

    def countdown(payload: dict[str, int]) -> None:
        ran.append(payload["n"])
        if payload["n"] > 0:
            step.defer({"n": payload["n"] - 1})

    step = JobDefinition(config, name="countdown", job_function=countdown)
    step.defer({"n": 3})
    assert drain(config) == DrainResult(succeeded=4)
    assert ran == [3, 2, 1, 0]

    ran.clear()
    step.defer({"n": 3})
    assert drain(config, with_recursion=False) == DrainResult(succeeded=1, scheduled=1)
    assert ran == [3]
    assert drain(config, with_recursion=False) == DrainResult(succeeded=1, scheduled=1)
    assert ran == [3, 2]


def test_dependents_run_after_their_dependencies_and_wait_after_a_failure(
    config: Config,
) -> None:
    """A dependent released by its dependency's success runs in the same drain; one whose
    dependency failed is left waiting (an orchestrator fails it in production)."""
    order: list[str] = []

    def work(payload: dict[str, Any]) -> None:
        order.append(payload["name"])
        if payload.get("fail"):
            raise RuntimeError("broken")

    step = JobDefinition(config, name="dag", job_function=work)
    extract = step.defer({"name": "extract"})
    step.defer({"name": "load"}, depends_on=[extract])
    broken = step.defer({"name": "broken", "fail": True})
    step.defer({"name": "never"}, depends_on=[broken])

    result = drain(config)

    assert order == ["extract", "load", "broken"]  # load, released, comes first by id
    assert result == DrainResult(succeeded=2, failed=1, waiting=1)


def test_delayed_jobs_run_only_with_scheduled(config: Config) -> None:
    """A job deferred with a delay is left for later, or run at once with with_scheduled."""
    later = JobDefinition(config, name="later", job_function=lambda: "done")
    handle = later.defer(delay_ms=3_600_000)
    assert drain(config) == DrainResult(scheduled=1)
    assert handle.status() == "scheduled"  # available, its run_at ahead
    assert drain(config, with_scheduled=True) == DrainResult(succeeded=1)
    assert handle.result(timeout=0) == "done"


def test_drain_takes_only_the_channels_and_definitions_asked_for(config: Config) -> None:
    """channels and definitions narrow the drain; other jobs stay queued and are not counted."""
    mail = JobDefinition(config, name="mail", job_function=lambda: None, channel="mail")
    report = JobDefinition(config, name="report", job_function=lambda: None)
    audit = JobDefinition(config, name="audit", job_function=lambda: None)
    mail.defer()
    report.defer()
    audit.defer()

    assert drain(config, channels="mail") == DrainResult(succeeded=1)
    assert drain(config, definitions=report) == DrainResult(succeeded=1)
    assert drain(config, definitions=[report, "audit"], channels=["_default"]) == DrainResult(
        succeeded=1
    )
    assert drain(config) == DrainResult()


def test_jobs_of_definitions_unknown_to_the_config_are_left_alone(
    config: Config, test_dsn: str
) -> None:
    """A job of a definition this Config does not carry is not claimed (no attempt spent)."""
    JobDefinition(config, name="mine", job_function=lambda: None)
    producer = Config(test_dsn, schema=config.schema)
    try:
        JobDefinition(producer, name="elsewhere", job_function=lambda: None).defer()
    finally:
        producer.close()
    assert drain(config) == DrainResult()
    (job,) = config.jobs.list()
    assert (job.status, job.attempt) == ("available", 0)


def test_a_drain_that_never_ends_gives_up_after_its_timeout(config: Config) -> None:
    """A job that always defers another ends the drain with TimeoutError; the job claimed
    past the deadline is handed back unrun, its attempt refunded."""

    def forever() -> None:
        loop.defer()

    loop = JobDefinition(config, name="forever", job_function=forever)
    loop.defer()
    with pytest.raises(TimeoutError, match="still runnable"):
        drain(config, timeout=0.2)
    (left,) = config.jobs.list(status="available")
    assert left.attempt == 0
    assert config.jobs.count(status="running") == 0


def test_a_job_cancelled_while_it_runs_counts_as_cancelled(config: Config) -> None:
    """The finish of a job cancelled during its attempt is refused, as a worker's is."""

    def cancel_myself(payload: dict[str, Any], ctx: JobContext) -> None:
        config.jobs.cancel(ctx.job_id)

    definition = JobDefinition(config, name="cancelled", job_function=cancel_myself)
    handle = definition.defer({})
    result = drain(config)
    assert result == DrainResult(cancelled=1)
    assert result.cancelled_ids == (handle.id,)
    assert handle.status() == "cancelled"


def test_an_attempt_past_its_timeout_is_recorded_as_timed_out(config: Config) -> None:
    """A def job past attempt_timeout_ms sees ctx.should_stop and its attempt times out."""

    def slow(payload: dict[str, Any], ctx: JobContext) -> None:
        while not ctx.should_stop:
            threading.Event().wait(0.01)

    definition = JobDefinition(config, name="slow", job_function=slow, attempt_timeout_ms=100)
    definition.defer({})
    result = drain(config)
    assert result == DrainResult(failed=1)
    assert result.attempts[0].outcome == "timed_out"


def test_drain_async_runs_async_jobs_on_the_callers_loop(config: Config) -> None:
    """drain_async awaits async def jobs in the calling task's loop, def jobs on a thread."""
    loops: list[object] = []

    async def fetch(payload: dict[str, int]) -> int:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return payload["n"] * 2

    fetching = JobDefinition(config, name="fetch", job_function=fetch)
    plain = JobDefinition(config, name="plain", job_function=lambda payload: payload["n"])

    async def main() -> tuple[DrainResult, object]:
        await fetching.defer_async({"n": 21})
        await plain.defer_many_async([{"n": 1}])
        result = await drain_async(config)
        await config.close_async()
        return result, asyncio.get_running_loop()

    result, loop = asyncio.run(main())
    assert result == DrainResult(succeeded=2)
    assert loops == [loop]


def test_sync_drain_runs_async_jobs_on_a_loop_of_their_own(config: Config) -> None:
    """drain (sync) runs an async def job to its end, structured payload and result alike."""

    async def total(order: Order) -> int:
        await asyncio.sleep(0)
        return order.quantity * 10

    definition = JobDefinition(config, name="total", job_function=total, payload_type=Order)
    handle = definition.defer(Order("tea", 4))
    assert drain(config) == DrainResult(succeeded=1)
    assert handle.result(timeout=0) == 40


def test_bad_arguments_are_refused_before_anything_runs(config: Config) -> None:
    """Each bad argument raises ConfigurationError naming it; no job is touched."""
    JobDefinition(config, name="known", job_function=lambda: None).defer()
    with pytest.raises(ConfigurationError, match=r"^definitions: 'unknown' is not registered"):
        drain(config, definitions=["unknown"])
    with pytest.raises(ConfigurationError, match=r"^channels: must name at least one"):
        drain(config, channels=[])
    with pytest.raises(ConfigurationError, match=r"^timeout: "):
        drain(config, timeout=0)
    with pytest.raises(ConfigurationError, match=r"^with_scheduled: "):
        drain(config, with_scheduled="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"^config: "):
        drain("postgresql://")  # type: ignore[arg-type]
    assert config.jobs.count(status="available") == 1


def test_a_schema_not_migrated_is_reported(test_dsn: str, schema: str) -> None:
    """drain on a schema that was never migrated raises SchemaNotReadyError."""
    with Config(test_dsn, schema=schema) as bare, pytest.raises(SchemaNotReadyError):
        drain(bare)


def test_the_runner_leaves_no_worker_row_behind(config: Config) -> None:
    """The drain's worker row exists while it runs and is deleted afterwards."""
    rows: list[int] = []

    def count_workers() -> None:
        with config.connection() as conn:
            row = conn.execute(f'SELECT count(*) FROM "{config.schema}".worker').fetchone()
        rows.append(row[0] if row else -1)

    JobDefinition(config, name="peek", job_function=count_workers).defer()
    drain(config)
    count_workers()
    assert rows == [1, 0]
