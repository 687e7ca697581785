"""The worker's heartbeat: its row stays fresh and the leases of its jobs are extended.

A service in the orchestrator's manner: :meth:`WorkerHeartbeat.run_once` does
one pass, and the worker's loop calls it every ``heartbeat_interval_ms``. One
statement refreshes the worker row and extends the lease of every job it holds
(fenced by lock token: a job that was rescued meanwhile is not extended), and
returns the held jobs that were cancelled while they ran, whose attempts the
worker then stops (the fallback of the cancel's notification); once a minute
a second one marks the definitions it carries as alive, so that the
stale-definition sweep leaves them alone. A worker row that vanished (an
orchestrator found its heartbeat stale and removed it) is inserted again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import psycopg
from psycopg_pool import AsyncConnectionPool

from orchestra import _db, events
from orchestra._definition import JobDefinition
from orchestra._event_origin import EventOrigin
from orchestra._sql import Queries
from orchestra._worker._attempts import Claimed
from orchestra._worker._describe import describe
from orchestra._worker._report import WorkerStats
from orchestra._worker._retry import DatabaseErrors, retry_delay_s

logger = logging.getLogger("orchestra.worker")

#: How often a worker refreshes last_heartbeat_at of the definitions it carries.
DEFINITION_HEARTBEAT_S = 60.0
#: The heartbeat's interval unless a lock interval of the channels asks for less.
HEARTBEAT_INTERVAL_MS_DEFAULT = 10_000


def default_interval_ms(definitions: Iterable[JobDefinition[Any]], channels: Iterable[str]) -> int:
    """10 s, or a third of the shortest lock interval of the channels' definitions:
    a lease survives two missed heartbeats."""
    served = set(channels)
    locks = [d.lock_interval_ms for d in definitions if d.channel in served]
    return min([HEARTBEAT_INTERVAL_MS_DEFAULT, *(lock // 3 for lock in locks)])


@attrs.define
class WorkerRow:
    """This worker's row in the worker table: what it registers, and its id once it has."""

    name: str
    host: str
    pid: int
    #: The channels served, in order (empty: none in particular, stored as NULL).
    channels: tuple[str, ...]
    concurrency: int
    #: Presented with every heartbeat; only its hash is stored.
    secret: str
    worker_id: int | None = None

    def registration(self) -> dict[str, Any]:
        """The parameters of ``worker_register``."""
        return {
            "name": self.name,
            "role": "worker",
            "host": self.host,
            "pid": self.pid,
            "channels": list(self.channels) or None,
            "concurrency": self.concurrency,
            "secret": self.secret,
        }

    async def deregister(self, pool: AsyncConnectionPool[Any], queries: Queries) -> None:
        """Delete the row (at the stop); a failure is logged: the orchestrator reaps it."""
        if self.worker_id is None:
            return
        try:
            async with pool.connection(timeout=5) as conn:
                await conn.execute(
                    queries["worker_delete"], {"worker_id": self.worker_id, "secret": self.secret}
                )
        except Exception:
            logger.warning("%s-worker: could not delete the worker row", self.name, exc_info=True)

    def register(self, conn: psycopg.Connection[Any], queries: Queries) -> int:
        """Insert the row (at start-up); return its id."""
        row = conn.execute(queries["worker_register"], self.registration()).fetchone()
        assert row is not None
        self.worker_id = int(row[0])
        return self.worker_id


@attrs.frozen
class HeartbeatResult:
    """What one pass did and found.

    Attributes:
        registered_again: the worker row was inserted again.
        cancelled: the ``(id, lock token)`` of held jobs that were cancelled
            while their attempt ran.
    """

    registered_again: bool = False
    cancelled: tuple[tuple[int, uuid.UUID], ...] = ()


class WorkerHeartbeat:
    """Refreshes the worker row and the leases of the jobs it holds.

    Args:
        queries: the rendered queries.
        row: this worker's row (its id changes when it is inserted again).
        definitions: the names of the definitions this worker carries.
        held: the jobs the worker holds now.
        now: a ``time.monotonic()`` clock (tests pass their own).
        stats: counts the statements sent (``heartbeat_queries``).
    """

    name = "heartbeat"

    def __init__(
        self,
        queries: Queries,
        row: WorkerRow,
        *,
        definitions: Iterable[str],
        held: Callable[[], Iterable[Claimed]],
        now: Callable[[], float],
        stats: WorkerStats,
    ) -> None:
        self._stats = stats
        self._queries = queries
        self._row = row
        self._definitions = list(definitions)
        self._held = held
        self._now = now
        self._definitions_due = now() + DEFINITION_HEARTBEAT_S

    @property
    def worker_id(self) -> int | None:
        """The worker row's id (it changes when the row is inserted again)."""
        return self._row.worker_id

    async def run_once(self, conn: psycopg.AsyncConnection[Any]) -> HeartbeatResult:
        """One heartbeat: the definitions when due, then the worker row and leases."""
        if self._now() >= self._definitions_due:
            await conn.execute(
                self._queries["definition_heartbeat_many"],
                {"names": self._definitions, "now": None},
            )
            self._definitions_due = self._now() + DEFINITION_HEARTBEAT_S
            self._stats.heartbeat_queries += 1
        held = list(self._held())
        self._stats.heartbeat_queries += 1
        cursor = await conn.execute(
            self._queries["worker_heartbeat"],
            {
                "worker_id": self._row.worker_id,
                "secret": self._row.secret,
                "ids": [job.id for job in held],
                "tokens": [job.token for job in held],
            },
        )
        row = await cursor.fetchone()
        cancelled = () if row is None else tuple(zip(row[2], row[3], strict=True))
        if row is None or row[0]:
            return HeartbeatResult(cancelled=cancelled)
        cursor = await conn.execute(self._queries["worker_register"], self._row.registration())
        registered = await cursor.fetchone()
        assert registered is not None
        self._row.worker_id = int(registered[0])
        return HeartbeatResult(registered_again=True, cancelled=cancelled)


async def beat(
    heartbeat: WorkerHeartbeat,
    pool: AsyncConnectionPool[Any],
    *,
    interval_ms: Callable[[], int],
    errors: DatabaseErrors,
    origin: EventOrigin,
    emit: Callable[[events.Event], None],
    on_cancelled: Callable[[tuple[tuple[int, uuid.UUID], ...]], None],
) -> None:
    """Run ``heartbeat`` every ``interval_ms()`` until cancelled; failures are
    reported and retried sooner (a terminated connection is replaced at once):
    a lease must not run out for want of a retry. Held jobs found cancelled
    go to ``on_cancelled``."""
    failures = 0
    while True:
        interval_s = interval_ms() / 1000
        await asyncio.sleep(min(interval_s, retry_delay_s(failures)) if failures else interval_s)
        worker_id = heartbeat.worker_id
        try:
            async with pool.connection() as conn:
                result = await heartbeat.run_once(conn)
            if result.cancelled:
                on_cancelled(result.cancelled)
            if result.registered_again:
                logger.warning(
                    "%s: worker row %s vanished; registered again as %s",
                    origin.daemon_name,
                    worker_id,
                    heartbeat.worker_id,
                )
            failures = 0
        except Exception as exc:
            failures += 1
            await errors.drop_dead_connections(exc)
            message = _db.redact(describe(exc))
            emit(
                events.DaemonDatabaseError(
                    **origin.header(),
                    operation="heartbeat",
                    error=message,
                    retry_in_ms=round(min(interval_s, retry_delay_s(failures)) * 1000),
                )
            )
            logger.warning("%s: heartbeat failed: %s", origin.daemon_name, message)
