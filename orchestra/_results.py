"""Waiting for a job's result (request/response).

The result lives in the job's history row (``job_history``, for the
retention period), so a waiter that dies loses nothing: any process can ask again by id. A
waiter reads the row once; if the job is not finalized yet it opens a
connection of its own, LISTENs on the schema's finished channel, reads the
row again (a finish committed between the first read and the LISTEN would
otherwise be missed) and then waits. Every finishing statement sends one
notification listing the finalized ids; a waiter re-reads its row only when
its id is listed (or the list was too long to send), and also every
``poll_interval_s`` in case a notification was lost, so a wait always ends.

A dedicated connection rather than a pooled one: a wait may last minutes and
must not take a connection that ``defer`` needs, and LISTEN state must not
leak into a pool.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from psycopg import sql

from orchestra import _converter
from orchestra.errors import (
    ConfigurationError,
    JobFailed,
    PayloadError,
    ResultTimeoutError,
    UnknownJobError,
)

if TYPE_CHECKING:
    import psycopg

    from orchestra._config import Config

POLL_INTERVAL_S_DEFAULT = 1.0
_FINAL = frozenset({"succeeded", "failed", "cancelled"})


def check_wait(timeout: float | None, poll_interval_s: float) -> None:
    """Validate the arguments of a wait before touching the database."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
    ):
        raise ConfigurationError("timeout", f"must be None or seconds >= 0, got {timeout!r}")
    if (
        isinstance(poll_interval_s, bool)
        or not isinstance(poll_interval_s, int | float)
        or poll_interval_s <= 0
    ):
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


def _listen(config: Config) -> sql.Composed:
    return sql.SQL("LISTEN {}").format(sql.Identifier(config.finished_channel))


def wait(
    config: Config,
    job_id: int,
    *,
    timeout: float | None,
    as_type: Any,
    poll_interval_s: float,
) -> Any:
    """Block until the job is finalized; its result, or JobFailed / ResultTimeoutError."""
    check_wait(timeout, poll_interval_s)
    query = config.queries["job_outcome"]
    params = {"id": job_id}
    with config.connection() as conn:
        done, value = outcome(conn.execute(query, params).fetchone(), job_id, as_type)
    if done:
        return value
    deadline = None if timeout is None else time.monotonic() + timeout
    conn2: psycopg.Connection[Any]
    with config.connect() as conn2:
        conn2.execute(_listen(config))
        while True:
            done, value = outcome(conn2.execute(query, params).fetchone(), job_id, as_type)
            if done:
                return value
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ResultTimeoutError(job_id, value, float(timeout or 0))
            wait_s = poll_interval_s if remaining is None else min(poll_interval_s, remaining)
            stop_at = time.monotonic() + wait_s
            # Wait for a notification about this job; others are skipped.
            while (left := stop_at - time.monotonic()) > 0:
                notes = list(conn2.notifies(timeout=left, stop_after=1))
                if any(concerns(n.payload, job_id) for n in notes):
                    break


async def wait_async(
    config: Config,
    job_id: int,
    *,
    timeout: float | None,  # noqa: ASYNC109 (see JobHandle.result_async)
    as_type: Any,
    poll_interval_s: float,
) -> Any:
    """Async twin of :func:`wait`."""
    check_wait(timeout, poll_interval_s)
    query = config.queries["job_outcome"]
    params = {"id": job_id}
    async with config.connection_async() as conn:
        cursor = await conn.execute(query, params)
        done, value = outcome(await cursor.fetchone(), job_id, as_type)
    if done:
        return value
    deadline = None if timeout is None else time.monotonic() + timeout
    async with await config.connect_async() as conn2:
        await conn2.execute(_listen(config))
        while True:
            cursor = await conn2.execute(query, params)
            done, value = outcome(await cursor.fetchone(), job_id, as_type)
            if done:
                return value
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ResultTimeoutError(job_id, value, float(timeout or 0))
            wait_s = poll_interval_s if remaining is None else min(poll_interval_s, remaining)
            stop_at = time.monotonic() + wait_s
            while (left := stop_at - time.monotonic()) > 0:
                notes = [n async for n in conn2.notifies(timeout=left, stop_after=1)]
                if any(concerns(n.payload, job_id) for n in notes):
                    break
