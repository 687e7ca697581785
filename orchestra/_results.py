"""Job handles, and waiting for a job's result (request/response).

A :class:`JobHandle` names a deferred job by id. The result lives in the
job's history row (``job_history``, for the retention period), so a waiter
that dies loses nothing: any process can ask again by id. A waiter reads the
row once; if the job is not finalized yet it opens a connection of its own,
LISTENs on the schema's finished channel, reads the row again (a finish
committed between the first read and the LISTEN would otherwise be missed)
and then waits. Every finishing statement sends one notification listing the
finalized ids; a waiter re-reads its row only when its id is listed (or the
list was too long to send), and also every ``poll_interval_s`` in case a
notification was lost, so a wait always ends.

A dedicated connection rather than a pooled one: a wait may last minutes and
must not take a connection that ``defer`` needs, and LISTEN state must not
leak into a pool.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import attrs
import psycopg
from psycopg import sql

from orchestra import _converter
from orchestra._checks import is_number
from orchestra._database import Database
from orchestra.errors import (
    ConfigurationError,
    JobFailed,
    PayloadError,
    ResultTimeoutError,
    UnknownJobError,
)

POLL_INTERVAL_S_DEFAULT = 1.0
_FINAL = frozenset({"succeeded", "failed", "cancelled"})


@attrs.frozen
class JobHandle:
    """A reference to a deferred job. Rebuild one from an id with ``JobHandle(id, config)``.

    Attributes:
        id: the job's id.
        deduplicated: True when ``defer`` found an unfinished job holding the
            same unique key and returned it instead of inserting a new one.
    """

    id: int
    config: Database = attrs.field(eq=False, repr=False)
    deduplicated: bool = attrs.field(default=False, eq=False, kw_only=True)

    def result(
        self,
        timeout: float | None = None,
        *,
        as_type: Any = None,
        poll_interval_s: float = POLL_INTERVAL_S_DEFAULT,
    ) -> Any:
        """Wait for the job to finish and return what its function returned.

        Args:
            timeout: seconds to wait; None waits as long as it takes.
            as_type: structure the stored JSON into this type (an attrs class,
                a dataclass ...); None returns plain JSON values.
            poll_interval_s: how often the row is re-read should a
                notification be lost.

        Raises:
            JobFailed: the job finally failed or was cancelled (carries the last error).
            ResultTimeoutError: still unfinished after ``timeout``; ask again later.
            UnknownJobError: no such job (never deferred, or swept without archive).
        """
        return wait(
            self.config,
            self.id,
            timeout=timeout,
            as_type=as_type,
            poll_interval_s=poll_interval_s,
        )

    async def result_async(
        self,
        # Same signature as result(): the timeout is the wait's own, reported
        # in ResultTimeoutError with the job's status, not a cancellation.
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        as_type: Any = None,
        poll_interval_s: float = POLL_INTERVAL_S_DEFAULT,
    ) -> Any:
        """Async twin of :meth:`result`."""
        return await wait_async(
            self.config,
            self.id,
            timeout=timeout,
            as_type=as_type,
            poll_interval_s=poll_interval_s,
        )

    def status(self) -> str:
        """The job's current status (``waiting``, ``available``, ``running``, ``succeeded`` ...)."""
        with self.config.connection() as conn:
            row = conn.execute(self.config.queries["job_status"], {"id": self.id}).fetchone()
        if row is None:
            raise UnknownJobError((self.id,))
        return str(row[0])

    def __int__(self) -> int:
        return self.id


def check_wait(timeout: float | None, poll_interval_s: float) -> None:
    """Validate the arguments of a wait before touching the database."""
    if timeout is not None and (not is_number(timeout) or timeout < 0):
        raise ConfigurationError("timeout", f"must be None or seconds >= 0, got {timeout!r}")
    if not is_number(poll_interval_s) or poll_interval_s <= 0:
        raise ConfigurationError(
            "poll_interval_s", f"must be a positive number of seconds, got {poll_interval_s!r}"
        )


def outcome(row: tuple[Any, ...] | None, job_id: int, as_type: Any) -> tuple[bool, Any]:
    """(done, value) from a ``job_outcome`` row; raises if the job failed or is unknown."""
    if row is None:
        raise UnknownJobError((job_id,))
    status, result, last_error = row
    if status == "succeeded":
        if as_type is None:
            return True, result
        try:
            return True, _converter.decode_payload(result, as_type)
        except Exception as exc:
            raise PayloadError(
                f"job {job_id}",
                f"its result does not fit {as_type!r}: {_converter.describe_structure_error(exc)}",
            ) from None
    if status in _FINAL:
        raise JobFailed(job_id, status, last_error)
    return False, status


def concerns(payload: str, job_id: int) -> bool:
    """Whether a finished-channel notification may be about ``job_id``."""
    return not payload or str(job_id) in payload.split(",")


def _listen(config: Database) -> sql.Composed:
    return sql.SQL("LISTEN {}").format(sql.Identifier(config.finished_channel))


# -- the wait, written once for both twins ------------------------------------
#
# _waiting yields what it needs and receives the answer: READ (the job's
# outcome row) or a number of seconds (the payloads of the notifications that
# arrived within them, at most one). The drivers, wait and wait_async, read
# the first row on a pooled connection and, if the job is unfinished, every
# later one on a dedicated connection that LISTENs from before the second read.

READ = "read"


def _waiting(
    job_id: int, timeout: float | None, as_type: Any, poll_interval_s: float
) -> Generator[str | float, Any, Any]:
    done, value = outcome((yield READ), job_id, as_type)
    if done:
        return value
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, value = outcome((yield READ), job_id, as_type)
        if done:
            return value
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ResultTimeoutError(job_id, value, float(timeout or 0))
        wait_s = poll_interval_s if remaining is None else min(poll_interval_s, remaining)
        stop_at = time.monotonic() + wait_s
        # Wait for a notification about this job; others are skipped.
        while (left := stop_at - time.monotonic()) > 0:
            payloads: list[str] = yield left
            if any(concerns(payload, job_id) for payload in payloads):
                break


def _advance(waiting: Generator[str | float, Any, Any], answer: Any) -> tuple[bool, Any]:
    """Hand the wait its answer: (True, what it needs next) or (False, the job's result)."""
    try:
        return True, waiting.send(answer)
    except StopIteration as stop:
        return False, stop.value


def wait(
    config: Database,
    job_id: int,
    *,
    timeout: float | None,
    as_type: Any,
    poll_interval_s: float,
) -> Any:
    """Block until the job is finalized; its result, or JobFailed / ResultTimeoutError."""
    check_wait(timeout, poll_interval_s)
    waiting = _waiting(job_id, timeout, as_type, poll_interval_s)
    query, params = config.queries["job_outcome"], {"id": job_id}
    next(waiting)
    with config.connection() as conn:
        pending, step = _advance(waiting, conn.execute(query, params).fetchone())
    if not pending:
        return step
    listener: psycopg.Connection[Any]
    with config.connect() as listener:
        listener.execute(_listen(config))
        while pending:
            if step == READ:
                answer = listener.execute(query, params).fetchone()
            else:
                notes = listener.notifies(timeout=step, stop_after=1)
                answer = [note.payload for note in notes]
            pending, step = _advance(waiting, answer)
    return step


async def wait_async(
    config: Database,
    job_id: int,
    *,
    timeout: float | None,  # noqa: ASYNC109 (see JobHandle.result_async)
    as_type: Any,
    poll_interval_s: float,
) -> Any:
    """Async twin of :func:`wait`."""
    check_wait(timeout, poll_interval_s)
    waiting = _waiting(job_id, timeout, as_type, poll_interval_s)
    query, params = config.queries["job_outcome"], {"id": job_id}
    next(waiting)
    async with config.connection_async() as conn:
        pending, step = _advance(waiting, await (await conn.execute(query, params)).fetchone())
    if not pending:
        return step
    async with await config.connect_async() as listener:
        await listener.execute(_listen(config))
        while pending:
            if step == READ:
                answer = await (await listener.execute(query, params)).fetchone()
            else:
                notes = listener.notifies(timeout=step, stop_after=1)
                answer = [note.payload async for note in notes]
            pending, step = _advance(waiting, answer)
    return step
