"""Job functions run by ``ChildPool`` children in tests/e2e/test_child_pool.py.

They live at module level so that a ``spawn`` child can import them by
reference (the repository root is on the parent's ``sys.path``, which spawn
children inherit). Functions that must block until the test acts wait on
files named in their payload, never on the clock alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from orchestra._worker._child import ChildJobContext

#: How long a job waiting on the test gives up after, so a broken test cannot hang a child.
GIVE_UP_S = 60.0


@attrs.frozen
class Greeting:
    """A typed payload."""

    name: str
    times: int


@attrs.frozen
class Greeted:
    """A typed return value, with what the job saw of its context."""

    text: str
    job_id: int
    attempt: int
    max_attempts: int
    definition: str
    pid: int


def greet(payload: Greeting, ctx: ChildJobContext) -> Greeted:
    """Return a greeting built from a typed payload and the context."""
    assert isinstance(payload, Greeting)  # structured in the child, not a dict
    ctx.logger.debug("greeting %s", payload.name)
    return Greeted(
        text=" ".join([f"hello {payload.name}"] * payload.times),
        job_id=ctx.job_id,
        attempt=ctx.attempt,
        max_attempts=ctx.max_attempts,
        definition=ctx.definition,
        pid=os.getpid(),
    )


async def double(payload: int) -> dict[str, Any]:
    """An ``async def`` job: it runs on an event loop of the child's own."""
    await asyncio.sleep(0)
    return {"doubled": payload * 2, "loop": type(asyncio.get_running_loop()).__name__}


def pid() -> int:
    """The child's process id: tells children apart."""
    return os.getpid()


def boom(payload: str) -> None:
    """Raise a plain exception."""
    raise ValueError(payload)


class UnpicklableError(Exception):
    """An exception that neither pickles (it holds a lock) nor rebuilds from its args."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    """Raise an exception that cannot cross a process boundary as an object."""
    raise UnpicklableError(7, "cannot be pickled")


def exit_via_sys_exit(payload: int) -> None:
    """``sys.exit`` inside a job fails the job, not the child."""
    sys.exit(payload)


def kill_self() -> None:
    """Die the hard way, as a segfault or the OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now(payload: int) -> None:
    """Leave with ``os._exit``: no cleanup, no reply."""
    os._exit(payload)


def not_json() -> object:
    """Return something that is not JSON."""
    return object()


def _touch(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


def block(payload: dict[str, str]) -> None:
    """Say so in ``payload["started"]``, then block, ignoring should_stop (to be timed out)."""
    _touch(payload["started"])
    threading.Event().wait(GIVE_UP_S)


def wait_for_stop(payload: dict[str, str], ctx: ChildJobContext) -> bool:
    """Say so in ``payload["started"]``, then return True once ``ctx.should_stop``."""
    _touch(payload["started"])
    deadline = time.monotonic() + GIVE_UP_S
    while not ctx.should_stop:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # the job's own cooperative polling, as a real job would
    return True


def span(payload: float) -> dict[str, float | int]:
    """Busy for ``payload`` seconds; returns when it ran (monotonic clock is system-wide)."""
    start = time.monotonic()
    time.sleep(payload)
    return {"pid": os.getpid(), "start": start, "end": time.monotonic()}


class Multiplier:
    """A module-level callable instance: it pickles by value of its attributes."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, payload: int) -> int:
        return payload * self.factor


TRIPLE = Multiplier(3)
