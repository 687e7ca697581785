"""Waiting for a job's result (request/response), for ``JobHandle.result``.

The result lives in the job's history row (``job_history``, for the retention period), so a waiter
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
leak into a pool. It goes to the Database's ``listen_dsn``; behind a
transaction pooler without one, there is no LISTEN: the waiter reads the row
every ``poll_interval_s`` on a pooled connection it returns in between.

The results of a job's dependencies (``ctx.dependency_results()``) are read
here too, by the running job, in one statement (``job_dependency_results``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Iterable
from typing import Any

import attrs
import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from orchestra import _converter
from orchestra._checks import is_number
from orchestra._database import Database
from orchestra.errors import (
    ConfigurationError,
    DependencyResultError,
    JobFailed,
    PayloadError,
    ResultTimeoutError,
    UnknownJobError,
)

POLL_INTERVAL_S_DEFAULT = 1.0
_FINAL = frozenset({"succeeded", "failed", "cancelled"})


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
# _waiting yields the steps it needs and receives their answers: Read (the
# job's outcome row) or Wait (the payloads of the notifications that arrived
# within so many seconds, at most one). The drivers, wait and wait_async,
# answer the first Read on a pooled connection and, if the job is unfinished,
# every later step on a dedicated connection that LISTENs from before the
# second Read.


@attrs.frozen
class Read:
    """Read the job's ``job_outcome`` row; the answer is the row or None."""


@attrs.frozen
class Wait:
    """Wait up to ``seconds`` for a notification; the answer is the payloads received."""

    seconds: float


Step = Read | Wait
#: The one Read step (it carries nothing).
READ = Read()


def _waiting(
    job_id: int, timeout: float | None, as_type: Any, poll_interval_s: float
) -> Generator[Step, Any, Any]:
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
            payloads: list[str] = yield Wait(left)
            if any(concerns(payload, job_id) for payload in payloads):
                break


def _advance(waiting: Generator[Step, Any, Any], answer: Any) -> tuple[bool, Any]:
    """Hand the wait its answer: (True, the step it needs next) or (False, the job's result)."""
    try:
        return True, waiting.send(answer)
    except StopIteration as stop:
        return False, stop.value


#: How many times in a row a waiter whose connection broke (a restart, a
#: failover) carries on with a new one before the error reaches the caller.
BROKEN_IN_A_ROW_MAX = 3


def _read_pooled(
    config: Database, query: Any, params: dict[str, Any], *, every_row: bool = False
) -> Any:
    """The job's outcome row (or, with ``every_row``, all rows), read on a pooled connection.

    A read changes nothing, so it is tried again when the connection it got
    was broken: after a restart or a failover the pool may hold several dead
    ones, each discarded as it fails (at most ``pool_max_size`` of them).
    """
    for attempt in range(config.pool_max_size + 1):
        try:
            with config.connection() as conn:
                cursor = conn.execute(query, params)
                return cursor.fetchall() if every_row else cursor.fetchone()
        except PoolTimeout:
            raise  # no connection to be had: trying again would wait as long again
        except psycopg.OperationalError:
            if attempt == config.pool_max_size:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _read_pooled_async(
    config: Database, query: Any, params: dict[str, Any], *, every_row: bool = False
) -> Any:
    """Async twin of :func:`_read_pooled`."""
    for attempt in range(config.pool_max_size + 1):
        try:
            async with config.connection_async() as conn:
                cursor = await conn.execute(query, params)
                return await (cursor.fetchall() if every_row else cursor.fetchone())
        except PoolTimeout:
            raise  # no connection to be had: trying again would wait as long again
        except psycopg.OperationalError:
            if attempt == config.pool_max_size:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


#: The answer to a Wait after the listener came back: a notification may have
#: been missed while it was away, so the waiter reads the row again.
_READ_AGAIN = [""]


def wait(
    config: Database,
    job_id: int,
    *,
    timeout: float | None,
    as_type: Any,
    poll_interval_s: float,
) -> Any:
    """Block until the job is finalized; its result, or JobFailed / ResultTimeoutError.

    Without a listen DSN (behind a transaction pooler) the wait reads on pooled
    connections and sleeps in between. A listener that breaks is opened again
    (with the Database's connection attempts), so that a wait outlives a
    restart or a failover of the server.
    """
    check_wait(timeout, poll_interval_s)
    waiting = _waiting(job_id, timeout, as_type, poll_interval_s)
    query, params = config.queries["job_outcome"], {"id": job_id}
    next(waiting)
    pending, step = _advance(waiting, _read_pooled(config, query, params))
    listens = config.listen_dsn is not None
    listener: psycopg.Connection[Any] | None = None
    broken = 0
    answer: Any
    try:
        while pending:
            try:
                if listens and listener is None:
                    listener = config.connect_listener()
                    assert listener is not None
                    listener.execute(_listen(config))
                    if broken and isinstance(step, Wait):
                        pending, step = _advance(waiting, _READ_AGAIN)
                        continue
                if isinstance(step, Wait):
                    if listener is None:
                        time.sleep(step.seconds)
                        answer = []
                    else:
                        notes = listener.notifies(timeout=step.seconds, stop_after=1)
                        answer = [note.payload for note in notes]
                elif listener is None:
                    answer = _read_pooled(config, query, params)
                else:
                    answer = listener.execute(query, params).fetchone()
            except PoolTimeout:
                raise
            except psycopg.OperationalError:
                broken += 1
                if broken > BROKEN_IN_A_ROW_MAX:
                    raise
                if listener is not None:
                    listener.close()
                    listener = None
                continue
            broken = 0
            pending, step = _advance(waiting, answer)
    finally:
        if listener is not None:
            listener.close()
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
    pending, step = _advance(waiting, await _read_pooled_async(config, query, params))
    listens = config.listen_dsn is not None
    listener: psycopg.AsyncConnection[Any] | None = None
    broken = 0
    answer: Any
    try:
        while pending:
            try:
                if listens and listener is None:
                    listener = await config.connect_listener_async()
                    assert listener is not None
                    await listener.execute(_listen(config))
                    if broken and isinstance(step, Wait):
                        pending, step = _advance(waiting, _READ_AGAIN)
                        continue
                if isinstance(step, Wait):
                    if listener is None:
                        await asyncio.sleep(step.seconds)
                        answer = []
                    else:
                        notes = listener.notifies(timeout=step.seconds, stop_after=1)
                        answer = [note.payload async for note in notes]
                elif listener is None:
                    answer = await _read_pooled_async(config, query, params)
                else:
                    answer = await (await listener.execute(query, params)).fetchone()
            except PoolTimeout:
                raise
            except psycopg.OperationalError:
                broken += 1
                if broken > BROKEN_IN_A_ROW_MAX:
                    raise
                if listener is not None:
                    await listener.close()
                    listener = None
                continue
            broken = 0
            pending, step = _advance(waiting, answer)
    finally:
        if listener is not None:
            await listener.close()
    return step


# -- the results of a job's dependencies ----------------------------------------


def dependency_results_from_rows(
    job_id: int, rows: Iterable[tuple[Any, ...]], as_type: Any
) -> dict[int, Any]:
    """``{dependency id: result}`` from the rows of ``job_dependency_results``.

    Written once for every caller: a job in the worker's process, in
    ``orchestra.testing``, and a job in a child process, which gets the rows
    from its parent and structures them itself (``as_type`` is the child's).
    Raises DependencyResultError naming every dependency without a result,
    PayloadError when a result does not fit ``as_type``.
    """
    results: dict[int, Any] = {}
    missing: dict[int, str] = {}
    for dependency, status, text in rows:
        if status == "succeeded":
            value = None if text is None else _converter.load_stored(text)
            if as_type is not None:
                try:
                    value = _converter.decode_payload(value, as_type)
                except Exception as exc:
                    raise PayloadError(
                        f"job {dependency}",
                        f"its result does not fit {as_type!r}: "
                        f"{_converter.describe_structure_error(exc)}",
                    ) from None
            results[int(dependency)] = value
        elif status is None:
            missing[int(dependency)] = (
                "is no longer kept by the history (it finished longer ago than the "
                "orchestrator's finalized_job_threshold_ms)"
            )
        elif status in _FINAL:
            missing[int(dependency)] = f"is {status}: it was retried after this job was released"
        else:
            missing[int(dependency)] = (
                f"is {status}: it was retried after this job was released, and has no result yet"
            )
    if missing:
        raise DependencyResultError(job_id, missing)
    return results


def dependency_results(config: Database, job_id: int, *, as_type: Any) -> dict[int, Any]:
    """The results of the jobs ``job_id`` depends on, by id (``JobContext.dependency_results``)."""
    rows = _read_pooled(
        config, config.queries["job_dependency_results"], {"id": job_id}, every_row=True
    )
    return dependency_results_from_rows(job_id, rows, as_type)


async def read_dependency_rows_async(config: Database, job_id: int) -> list[tuple[Any, ...]]:
    """The rows of ``job_dependency_results`` for ``job_id``, not decoded (for a child process)."""
    rows: list[tuple[Any, ...]] = await _read_pooled_async(
        config, config.queries["job_dependency_results"], {"id": job_id}, every_row=True
    )
    return rows


async def dependency_results_async(
    config: Database, job_id: int, *, as_type: Any
) -> dict[int, Any]:
    """Async twin of :func:`dependency_results`."""
    rows = await read_dependency_rows_async(config, job_id)
    return dependency_results_from_rows(job_id, rows, as_type)
