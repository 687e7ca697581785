"""A worker's failed statements: reported once each, retried after doubling pauses.

The lanes' claims and finishes share one streak: while the database is
unreachable every statement fails, and the pauses grow together instead of
each lane hammering the server on its own schedule. The heartbeat keeps its own
count and retries sooner (:mod:`._heartbeat`): a lease must not run out for
want of a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from orchestra import _db, events
from orchestra._event_origin import EventOrigin
from orchestra._worker._describe import describe
from orchestra.errors import PayloadError

logger = logging.getLogger("orchestra.worker")

ERROR_BACKOFF_MIN_S = 0.2
ERROR_BACKOFF_MAX_S = 15.0


def retry_delay_s(failures: int) -> float:
    """The wait before retrying after ``failures`` failures in a row (>= 1): doubling, capped."""
    return min(ERROR_BACKOFF_MAX_S, ERROR_BACKOFF_MIN_S * 2.0 ** (failures - 1))


class DatabaseErrors:
    """Reports a worker's failed statements and paces their retries.

    Args:
        daemon_name: starts every log line.
        origin: the worker, for its ``DaemonDatabaseError`` events.
        emit: hands an event to the worker's handlers.
        on_claim_failed: called after a failed claim (the worker claims again).
    """

    def __init__(
        self,
        *,
        daemon_name: str,
        origin: EventOrigin,
        emit: Callable[[events.Event], None],
        on_claim_failed: Callable[[], None],
    ) -> None:
        self._daemon_name = daemon_name
        self._origin = origin
        self._emit = emit
        self._on_claim_failed = on_claim_failed
        self.pool: AsyncConnectionPool[Any] | None = None
        #: Statements failed in a row.
        self.streak = 0

    def succeeded(self) -> None:
        """A statement committed: the database works."""
        self.streak = 0

    async def report(self, operation: str, exc: BaseException, *, wait: bool = True) -> None:
        """Report a failed statement and back off (``wait=False``: retry at once)."""
        self.streak += 1
        await self.drop_dead_connections(exc)
        delay = retry_delay_s(self.streak) if wait else 0.0
        message = _db.redact(describe(exc))
        if (
            isinstance(exc, psycopg.OperationalError | PayloadError)
            or "pool" in type(exc).__module__
        ):
            logger.warning(
                "%s: %s failed (%s); retrying in %.1f s",
                self._daemon_name,
                operation,
                message,
                delay,
            )
        else:
            logger.exception(
                "%s: %s failed; retrying in %.1f s", self._daemon_name, operation, delay
            )
        self._emit(
            events.DaemonDatabaseError(
                **self._origin.header(),
                operation=operation,
                error=message,
                retry_in_ms=round(delay * 1000),
            )
        )
        if delay:
            await asyncio.sleep(delay)
        if operation == "claim":
            self._on_claim_failed()

    async def drop_dead_connections(self, exc: BaseException) -> None:
        """After a connection error, test the pool's idle connections and replace
        the dead ones: when the server ended every session (a restart, a
        failover, terminated backends), the next statements would otherwise get
        dead connections one after the other, and a lease can lapse meanwhile."""
        if self.pool is None or not isinstance(exc, psycopg.OperationalError):
            return
        with contextlib.suppress(Exception):
            await self.pool.check()
