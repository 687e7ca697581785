"""ChildPool: job functions in real ``spawn`` child processes (no database needed).

Spawning a child costs ~0.2 s, so most tests share one module-scoped pool of two
children on one module-scoped event loop; tests that end a pool (stop, close)
make their own. Tests wait on files or replies with deadlines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra._worker._child import ChildReply, ChildRequest
from orchestra._worker._children import ChildPool
from orchestra.testing import wait_until
from tests.e2e.apps import child_jobs

WAIT_S = 30.0


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the whole module: the shared pool is bound to it."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def pool(runner: asyncio.Runner) -> Iterator[ChildPool]:
    """A pool of two children shared by the tests that leave it usable."""
    shared = ChildPool(2, name="test-shared")
    shared.start()
    yield shared
    runner.run(shared.close())


def request(
    function: Callable[..., Any],
    payload: Any = None,
    *,
    arity: int | None = None,
    payload_type: Any = None,
    job_id: int = 1,
) -> ChildRequest:
    """A request for ``function``; ``arity`` defaults to 1 with a payload, else 0."""
    if arity is None:
        arity = 0 if payload is None else 1
    return ChildRequest(
        function=function,
        payload_type=payload_type,
        payload=json.dumps(payload),
        arity=arity,
        job_id=job_id,
        attempt=2,
        max_attempts=5,
        definition_name="child-test",
    )


def call(
    runner: asyncio.Runner, pool: ChildPool, req: ChildRequest, timeout_s: float | None = WAIT_S
) -> ChildReply:
    return runner.run(pool.run(req, timeout_s=timeout_s))


def result(reply: ChildReply) -> Any:
    assert reply.ok, reply
    assert reply.result is not None
    return json.loads(reply.result)


def run_many(runner: asyncio.Runner, pool: ChildPool, reqs: list[ChildRequest]) -> list[ChildReply]:
    """Run ``reqs`` concurrently on ``pool``."""

    async def together() -> list[ChildReply]:
        return await asyncio.gather(*(pool.run(r, timeout_s=WAIT_S) for r in reqs))

    return runner.run(together())


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie counts: not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_for_file(path: Path) -> str:
    """The contents of ``path`` once it exists and is not empty (off the event loop)."""

    def contents() -> str:
        return path.read_text() if path.exists() else ""

    return str(await asyncio.to_thread(wait_until, contents, timeout=WAIT_S))


async def wait_gone(pids: list[int], within: float = WAIT_S) -> None:
    """Wait until none of ``pids`` exists any more (exited and reaped)."""
    await asyncio.to_thread(
        wait_until, lambda: not any(alive(p) for p in pids), timeout=within, interval=0.01
    )


def test_typed_payload_and_return_value(runner: asyncio.Runner, pool: ChildPool) -> None:
    req = request(
        child_jobs.greet,
        {"name": "ada", "times": 2},
        arity=2,
        payload_type=child_jobs.Greeting,
        job_id=42,
    )
    got = result(call(runner, pool, req))
    assert got == {
        "text": "hello ada hello ada",
        "job_id": 42,
        "attempt": 2,
        "max_attempts": 5,
        "definition": "child-test",
        "pid": got["pid"],
    }
    assert got["pid"] != os.getpid()
    assert got["pid"] in pool.pids


def test_async_function_and_callable_instance(runner: asyncio.Runner, pool: ChildPool) -> None:
    assert result(call(runner, pool, request(child_jobs.double, 21))) == {
        "doubled": 42,
        "loop": "_UnixSelectorEventLoop",
    }
    assert result(call(runner, pool, request(child_jobs.TRIPLE, 5))) == 15


def test_payload_that_does_not_structure(runner: asyncio.Runner, pool: ChildPool) -> None:
    req = request(child_jobs.greet, {"name": "ada"}, arity=2, payload_type=child_jobs.Greeting)
    reply = call(runner, pool, req)
    assert not reply.ok
    assert reply.payload_invalid
    assert not reply.crashed
    assert reply.error is not None
    assert reply.error.startswith("PayloadError: stored payload does not fit")
    assert "times" in reply.error


def test_exception_with_traceback(runner: asyncio.Runner, pool: ChildPool) -> None:
    before = pool.pids
    reply = call(runner, pool, request(child_jobs.boom, "boom"))
    assert not reply.ok
    assert reply.error == "ValueError: boom"
    assert reply.traceback is not None
    assert "in boom" in reply.traceback
    assert "child_jobs.py" in reply.traceback
    assert not (reply.crashed or reply.timed_out or reply.payload_invalid)
    assert pool.pids == before  # a failing job does not cost its child


def test_unpicklable_exception(runner: asyncio.Runner, pool: ChildPool) -> None:
    reply = call(runner, pool, request(child_jobs.raise_unpicklable))
    assert not reply.ok
    assert not reply.crashed
    assert reply.error == "UnpicklableError: code 7: cannot be pickled"
    assert reply.traceback is not None
    assert "raise_unpicklable" in reply.traceback


def test_sys_exit_fails_the_job_not_the_child(runner: asyncio.Runner, pool: ChildPool) -> None:
    before = pool.pids
    reply = call(runner, pool, request(child_jobs.exit_via_sys_exit, 3))
    assert not reply.ok
    assert not reply.crashed
    assert reply.error == "SystemExit: 3"
    assert pool.pids == before


def test_unserializable_return_value(runner: asyncio.Runner, pool: ChildPool) -> None:
    reply = call(runner, pool, request(child_jobs.not_json))
    assert not reply.ok
    assert reply.error is not None
    assert reply.error.startswith("PayloadError: payload for 'child-test': the return value")


@pytest.mark.parametrize(
    ("function", "payload", "death"),
    [(child_jobs.kill_self, None, "killed by SIGKILL"), (child_jobs.exit_now, 3, "exit code 3")],
    ids=["sigkill", "os-exit"],
)
def test_child_dying_mid_call_is_replaced(
    runner: asyncio.Runner,
    pool: ChildPool,
    function: Callable[..., Any],
    payload: Any,
    death: str,
) -> None:
    before = pool.pids
    reply = call(runner, pool, request(function, payload))
    assert reply == ChildReply(ok=False, crashed=True, error=f"the child process died ({death})")
    after = pool.pids
    assert len(after) == pool.size
    assert len(set(before) - set(after)) == 1  # one child replaced, the other untouched
    # Both children serve calls again, the fresh one included.
    replies = run_many(runner, pool, [request(child_jobs.span, 0.2) for _ in "ab"])
    assert {result(r)["pid"] for r in replies} == set(after)


def test_timeout_terminates_and_replaces(
    runner: asyncio.Runner, pool: ChildPool, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    reply = call(runner, pool, request(child_jobs.block, {"started": str(started)}), timeout_s=0.5)
    assert reply == ChildReply(ok=False, timed_out=True, error="attempt timed out after 0.5 s")
    victim = int(started.read_text())
    assert victim not in pool.pids
    runner.run(wait_gone([victim], within=1.0))  # gone by the time the reply came
    assert len(pool.pids) == pool.size
    assert result(call(runner, pool, request(child_jobs.pid))) in pool.pids


def test_cancelled_call_terminates_its_child(
    runner: asyncio.Runner, pool: ChildPool, tmp_path: Path
) -> None:
    started = tmp_path / "started"

    async def cancel_mid_call() -> int:
        task = asyncio.create_task(
            pool.run(request(child_jobs.block, {"started": str(started)}), timeout_s=None)
        )
        victim = int(await wait_for_file(started))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_gone([victim])
        return victim

    victim = runner.run(cancel_mid_call())
    assert victim not in pool.pids
    assert len(pool.pids) == pool.size
    assert result(call(runner, pool, request(child_jobs.pid))) in pool.pids


def test_calls_beyond_the_size_wait_for_a_free_child(
    runner: asyncio.Runner, pool: ChildPool
) -> None:
    replies = run_many(runner, pool, [request(child_jobs.span, 0.1) for _ in range(7)])
    spans = [result(r) for r in replies]
    assert {s["pid"] for s in spans} <= set(pool.pids)
    # Never more than `size` calls at once: count overlaps at each start.
    for s in spans:
        running = [o for o in spans if o["start"] <= s["start"] < o["end"]]
        assert len(running) <= pool.size


def test_functions_that_cannot_be_sent(runner: asyncio.Runner, pool: ChildPool) -> None:
    def nested() -> None: ...

    before = pool.pids
    for function, name in [(lambda: None, "<lambda>"), (nested, "nested")]:
        reply = call(runner, pool, request(function))
        assert not reply.ok
        assert not reply.crashed
        assert reply.error is not None
        assert name in reply.error
        assert "cannot be sent to a child process" in reply.error
        assert "Worker(processes=N) needs module-level functions" in reply.error
    assert pool.pids == before


def test_function_the_child_cannot_import(
    runner: asyncio.Runner, pool: ChildPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The children were spawned with the sys.path of that moment: a module
    # importable only through a path added since cannot be loaded in them.
    pool.start()
    before = pool.pids
    (tmp_path / "late_jobs_module.py").write_text("def late() -> int:\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import late_jobs_module  # type: ignore[import-not-found]

        reply = call(runner, pool, request(late_jobs_module.late))
    finally:
        sys.modules.pop("late_jobs_module", None)
    assert not reply.ok
    assert not reply.crashed
    assert reply.error is not None
    assert reply.error.startswith(
        "the job function late_jobs_module.late of 'child-test' cannot be imported in the "
        "child process (ModuleNotFoundError: No module named 'late_jobs_module')"
    )
    assert pool.pids == before  # the child survives it


def test_request_stop_reaches_running_jobs(tmp_path: Path) -> None:
    started = tmp_path / "started"

    async def scenario() -> ChildReply:
        own = ChildPool(1, name="test-stop")
        try:
            task = asyncio.create_task(
                own.run(
                    request(child_jobs.wait_for_stop, {"started": str(started)}, arity=2),
                    timeout_s=WAIT_S,
                )
            )
            await wait_for_file(started)
            own.request_stop()
            return await task
        finally:
            await own.close()

    assert result(asyncio.run(scenario())) is True


def test_close_stops_idle_children_and_terminates_busy_ones(tmp_path: Path) -> None:
    started = tmp_path / "started"

    async def scenario() -> None:
        own = ChildPool(2, name="test-close")
        replies = await asyncio.gather(
            *(own.run(request(child_jobs.span, 0.2), timeout_s=WAIT_S) for _ in "ab")
        )
        pids = own.pids
        assert {result(r)["pid"] for r in replies} == set(pids)  # both children ready
        busy = asyncio.create_task(
            own.run(request(child_jobs.block, {"started": str(started)}), timeout_s=None)
        )
        await wait_for_file(started)
        await own.close(timeout_s=0.5)
        reply = await busy
        assert reply == ChildReply(
            ok=False,
            crashed=True,
            error="the child process died (killed by SIGTERM) while the pool was closing",
        )
        await wait_gone(pids, within=0.1)  # close() joined them all
        assert own.pids == []
        await own.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            await own.run(request(child_jobs.pid), timeout_s=WAIT_S)

    asyncio.run(scenario())


def test_close_of_idle_children_does_not_wait_for_the_timeout() -> None:
    async def scenario() -> float:
        own = ChildPool(1, name="test-idle")
        assert result(await own.run(request(child_jobs.pid), timeout_s=WAIT_S)) == own.pids[0]
        begun = time.monotonic()
        await own.close(timeout_s=WAIT_S)
        return time.monotonic() - begun

    # The idle child obeys the stop message: no SIGTERM after WAIT_S.
    assert asyncio.run(scenario()) < WAIT_S / 3
