"""orchestra.testing.inline: a deferred job runs before defer returns, as a worker would run it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import attrs
import pytest

from orchestra import Config, Job, JobContext, JobDefinition, JobFailed
from orchestra.errors import OrchestraError
from orchestra.testing import inline


@attrs.frozen
class Greeting:
    name: str


def test_the_job_runs_in_the_calling_thread_before_defer_returns(config: Config) -> None:
    """The payload is structured, the function runs here, the result is stored and readable."""
    threads: list[str] = []

    def greet(greeting: Greeting) -> str:
        threads.append(threading.current_thread().name)
        return f"hello {greeting.name}"

    greeter = JobDefinition(config, name="greet", job_function=greet, payload_type=Greeting)
    with inline(config) as active:
        handle = greeter.defer(Greeting("ada"))
        assert handle.status() == "succeeded"
        assert handle.result(timeout=0) == "hello ada"
    assert threads == [threading.current_thread().name]
    assert [(a.job_id, a.status) for a in active.attempts] == [(handle.id, "succeeded")]


def test_outside_the_block_defer_only_enqueues(config: Config) -> None:
    """Before and after the block, defer inserts the job and runs nothing."""
    ran: list[int] = []
    counter = JobDefinition(config, name="count", job_function=lambda p: ran.append(p["n"]))
    before = counter.defer({"n": 1})
    with inline(config):
        counter.defer({"n": 2})
    after = counter.defer({"n": 3})
    assert ran == [2]
    assert (before.status(), after.status()) == ("available", "available")


def test_a_failing_job_is_retried_at_once_and_fails_with_its_error(config: Config) -> None:
    """Every attempt runs before defer returns, whatever the backoff; result() raises JobFailed,
    and on_failure fired."""
    failures: list[Job] = []

    def broken(payload: dict[str, Any], ctx: JobContext) -> None:
        raise ValueError(f"attempt {ctx.attempt} broke")

    definition = JobDefinition(
        config,
        name="broken",
        job_function=broken,
        num_attempts=3,
        backoff="exponential",
        on_failure=failures.append,
    )
    with inline(config) as active:
        handle = definition.defer({})
        with pytest.raises(JobFailed, match="attempt 3 broke"):
            handle.result(timeout=0)
    assert [a.status for a in active.attempts] == ["available", "available", "failed"]
    assert [job.id for job in failures] == [handle.id]


def test_a_flaky_job_succeeds_on_its_retry(config: Config) -> None:
    """A job that fails once succeeds on its second attempt within the same defer."""

    def flaky(payload: dict[str, Any], ctx: JobContext) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("gateway timeout")
        return ctx.attempt

    definition = JobDefinition(config, name="flaky", job_function=flaky, num_attempts=2)
    with inline(config):
        assert definition.defer({}).result(timeout=0) == 2


def test_jobs_deferred_by_a_job_run_within_it(config: Config) -> None:
    """A job's own defer runs the new job before that defer returns (depth first)."""
    events: list[str] = []

    def parent(payload: dict[str, Any]) -> None:
        events.append("parent starts")
        child_handle = child.defer({"n": 1})
        events.append(f"child {child_handle.status()}")

    parent_definition = JobDefinition(config, name="parent", job_function=parent)
    child = JobDefinition(config, name="child", job_function=lambda p: events.append("child runs"))
    with inline(config):
        parent_definition.defer({})
    assert events == ["parent starts", "child runs", "child succeeded"]


def test_defer_many_runs_every_job(config: Config) -> None:
    """Each job of a batch runs before defer_many returns."""
    squares = JobDefinition(config, name="square", job_function=lambda p: p["n"] ** 2)
    with inline(config):
        handles = squares.defer_many([{"n": n} for n in range(4)])
        assert [h.result(timeout=0) for h in handles] == [0, 1, 4, 9]


def test_a_job_deferred_in_an_open_transaction_runs_after_the_commit(config: Config) -> None:
    """Nothing runs inside the caller's transaction; the committed job runs at the next
    defer, and a rolled-back one never runs."""
    ran: list[str] = []
    note = JobDefinition(config, name="note", job_function=lambda p: ran.append(p["text"]))
    with inline(config) as active:
        with config.connect() as conn:
            with conn.transaction():
                kept = note.defer({"text": "committed"}, conn=conn)
                assert ran == []
            with pytest.raises(RuntimeError), conn.transaction():
                note.defer({"text": "rolled back"}, conn=conn)
                raise RuntimeError("roll back")
            assert ran == []
        note.defer({"text": "later"})
        assert ran == ["committed", "later"]
        assert kept.status() == "succeeded"
        assert len(active.pending) == 1  # the rolled-back job, which never runs


def test_a_committed_transaction_runs_at_the_end_of_the_block(config: Config) -> None:
    """Without a later defer, the committed job runs when the block ends (or at run_pending)."""
    ran: list[str] = []
    note = JobDefinition(config, name="note", job_function=lambda p: ran.append(p["text"]))
    with inline(config) as active:
        with config.connect() as conn, conn.transaction():
            first = note.defer({"text": "one"}, conn=conn)
        assert active.pending == (first.id,)
        assert [a.job_id for a in active.run_pending()] == [first.id]
        with config.connect() as conn, conn.transaction():
            note.defer({"text": "two"}, conn=conn)
    assert ran == ["one", "two"]


def test_an_autocommit_connection_runs_the_job_at_once(config: Config) -> None:
    """A defer on the caller's autocommit connection is committed: the job runs at once."""
    definition = JobDefinition(config, name="auto", job_function=lambda: "ran")
    with inline(config), config.connect() as conn:
        assert conn.autocommit
        assert definition.defer(conn=conn).result(timeout=0) == "ran"


def test_a_dependent_runs_once_its_dependency_succeeded(config: Config) -> None:
    """A job deferred waiting for a dependency deferred in the same transaction runs after it."""
    order: list[str] = []
    step = JobDefinition(config, name="step", job_function=lambda p: order.append(p["name"]))
    with inline(config):
        with config.connect() as conn, conn.transaction():
            first = step.defer({"name": "first"}, conn=conn)
            second = step.defer({"name": "second"}, conn=conn, depends_on=[first])
        third = step.defer({"name": "third"}, depends_on=[second])
    assert order == ["first", "second", "third"]
    assert third.status() == "succeeded"


def test_a_job_held_back_by_a_resource_key_runs_after_the_holder(config: Config) -> None:
    """A job deferred by a running job of the same resource key waits for it, then runs."""
    events: list[str] = []

    def outer(payload: dict[str, Any]) -> None:
        events.append("outer starts")
        handle = inner.defer({}, resource_key="account-1")
        events.append(f"inner {handle.status()}")

    outer_definition = JobDefinition(config, name="outer", job_function=outer)
    inner = JobDefinition(config, name="inner", job_function=lambda: events.append("inner runs"))
    with inline(config):
        outer_definition.defer({}, resource_key="account-1")
    assert events == ["outer starts", "inner available", "inner runs"]


def test_delayed_jobs_stay_queued_without_with_scheduled(config: Config) -> None:
    """By default a delayed job runs at once; with_scheduled=False leaves it in the queue."""
    later = JobDefinition(config, name="later", job_function=lambda: "done")
    with inline(config):
        assert later.defer(delay_ms=3_600_000).result(timeout=0) == "done"
    with inline(config, with_scheduled=False) as active:
        handle = later.defer(delay_ms=3_600_000)
        assert handle.status() == "scheduled"  # available, its run_at ahead
        assert active.pending == (handle.id,)
        assert later.defer().result(timeout=0) == "done"


def test_a_deduplicated_defer_does_not_run_the_holder(config: Config) -> None:
    """A defer that returns an earlier job's handle (dedup) runs nothing."""
    ran: list[int] = []
    unique = JobDefinition(
        config, name="unique", job_function=lambda p: ran.append(p["n"]), dedup=True
    )
    earlier = unique.defer({"n": 1})
    with inline(config):
        handle = unique.defer({"n": 1})
    assert handle.deduplicated and handle.id == earlier.id
    assert ran == []


def test_another_configs_definitions_are_not_run(config: Config, test_dsn: str) -> None:
    """Only the definitions of the Config given to inline run inline."""
    with Config(test_dsn, schema=config.schema) as other:
        theirs = JobDefinition(other, name="theirs", job_function=lambda: None)
        ours = JobDefinition(config, name="ours", job_function=lambda: None)
        with inline(config):
            assert theirs.defer().status() == "available"
            assert ours.defer().status() == "succeeded"


def test_other_threads_are_not_affected(config: Config) -> None:
    """The hook lives in a context variable: a thread started in the block does not see it."""
    definition = JobDefinition(config, name="threaded", job_function=lambda: None)
    statuses: list[str] = []

    def defer_elsewhere() -> None:
        statuses.append(definition.defer().status())

    with inline(config):
        thread = threading.Thread(target=defer_elsewhere)
        thread.start()
        thread.join()
        statuses.append(definition.defer().status())
    assert statuses == ["available", "succeeded"]


def test_a_block_cannot_be_entered_twice(config: Config) -> None:
    """An Inline is used once; nested blocks are separate objects."""
    block = inline(config)
    with block:
        pass
    with pytest.raises(OrchestraError, match="entered already"), block:
        pass


def test_an_exception_in_the_block_leaves_pending_jobs_unrun(config: Config) -> None:
    """When the block fails, the pending jobs are not run on the way out."""
    ran: list[int] = []
    definition = JobDefinition(config, name="pending", job_function=lambda: ran.append(1))
    with pytest.raises(RuntimeError), inline(config):
        with config.connect() as conn, conn.transaction():
            definition.defer(conn=conn)
        raise RuntimeError("the test failed")
    assert ran == []
    assert config.jobs.count(status="available") == 1
    definition.defer()
    assert ran == []  # the hook is gone


def test_async_defer_runs_async_jobs_in_the_calling_task(config: Config) -> None:
    """defer_async under `async with inline` awaits an async def job on the caller's loop,
    and runs a def job on a thread; nested async defers run inline too."""
    seen: list[tuple[str, object]] = []

    async def fetch(payload: dict[str, int]) -> int:
        seen.append(("fetch", asyncio.get_running_loop()))
        handle = await store.defer_async({"n": payload["n"]})
        return int(await handle.result_async(timeout=0))

    def save(payload: dict[str, int]) -> int:
        seen.append(("store", threading.current_thread().name))
        return payload["n"] + 1

    fetching = JobDefinition(config, name="fetch", job_function=fetch)
    store = JobDefinition(config, name="store", job_function=save)

    async def main() -> tuple[int, object]:
        async with inline(config):
            handle = await fetching.defer_async({"n": 41})
            value = await handle.result_async(timeout=0)
        await config.close_async()
        return value, asyncio.get_running_loop()

    value, loop = asyncio.run(main())
    assert value == 42
    assert seen[0] == ("fetch", loop)
    assert seen[1][0] == "store" and seen[1][1] != threading.current_thread().name


def test_sync_defer_of_an_async_job_runs_it_on_a_loop_of_its_own(config: Config) -> None:
    """A sync defer of an async def job, inside a running event loop, still runs it."""

    async def double(payload: dict[str, int]) -> int:
        await asyncio.sleep(0)
        return payload["n"] * 2

    definition = JobDefinition(config, name="double", job_function=double)

    async def main() -> int:
        with inline(config):
            return int(definition.defer({"n": 4}).result(timeout=0))

    assert asyncio.run(main()) == 8
    with inline(config):
        assert definition.defer({"n": 5}).result(timeout=0) == 10


def test_a_task_beside_the_block_is_not_affected(config: Config) -> None:
    """Two tasks on one loop: the one inside `async with inline` runs its job, the other
    only enqueues, though they interleave."""
    definition = JobDefinition(config, name="tasks", job_function=lambda: None)
    inside_entered = asyncio.Event()
    outside_done = asyncio.Event()

    async def inside() -> str:
        async with inline(config):
            inside_entered.set()
            await outside_done.wait()
            return (await definition.defer_async()).status()

    async def outside() -> str:
        await inside_entered.wait()
        handle = await definition.defer_async()
        outside_done.set()
        return handle.status()

    async def main() -> list[str]:
        statuses = await asyncio.gather(inside(), outside())
        await config.close_async()
        return list(statuses)

    assert asyncio.run(main()) == ["succeeded", "available"]
