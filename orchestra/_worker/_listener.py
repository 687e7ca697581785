"""The worker's LISTEN connection: wake-ups on enqueue, cancels, with reconnection.

NOTIFY is only a hint: notifications sent while the connection is down are
lost, so every (re)connection is followed by a catch-up poll, and the worker
polls every ``process_interval_ms`` regardless; a cancel missed here is found
by the heartbeat (``worker_heartbeat`` returns the held jobs cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from orchestra import _db

logger = logging.getLogger("orchestra.worker")

RECONNECT_DELAY_MIN_S = 0.5
RECONNECT_DELAY_MAX_S = 30.0


#: How a cancel of a running job starts its notification (manage_job_cancel):
#: ``cancel <worker id> <job id> <lock token>``. A space is never part of a job
#: channel's name, so no channel's wake-up can look like one.
CANCEL_PREFIX = "cancel "


def parse_cancel(payload: str, worker_id: int | None) -> tuple[int, uuid.UUID] | None:
    """The ``(job id, lock token)`` of a cancel notice meant for worker ``worker_id``;
    None for anything else. A notice for another worker fails the prefix test,
    a comparison of a few characters."""
    if worker_id is None or not payload.startswith(f"{CANCEL_PREFIX}{worker_id} "):
        return None
    try:
        _, _, job_id, token = payload.split(" ")
        return int(job_id), uuid.UUID(token)
    except ValueError:
        logger.warning("ignored a malformed cancel notification: %r", payload[:200])
        return None


class Listener:
    """Keeps a LISTEN connection open and calls ``on_wakeup`` for notifications of its channels.

    A notification's payload is the job channel it announces (see
    producer.sql): one of the worker's channels wakes it, any other does not.
    Or it is a cancel of a running job (:data:`CANCEL_PREFIX`): one for this
    worker (``worker_id()``) goes to ``on_cancel``, others are ignored.
    """

    def __init__(
        self,
        dsn: str,
        notify_channel: str,
        job_channels: Iterable[str],
        *,
        on_wakeup: Callable[[], None],
        on_lost: Callable[[str], None],
        on_restored: Callable[[], None],
        worker_id: Callable[[], int | None],
        on_cancel: Callable[[int, uuid.UUID], None],
    ) -> None:
        self._dsn = dsn
        self._notify_channel = notify_channel
        self._job_channels = frozenset(job_channels)
        self._on_wakeup = on_wakeup
        self._on_lost = on_lost
        self._on_restored = on_restored
        self._worker_id = worker_id
        self._on_cancel = on_cancel
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled."""
        delay = RECONNECT_DELAY_MIN_S
        lost = False
        while True:
            try:
                # TCP keepalives notice a peer that vanished without a FIN (a
                # network partition, a killed VM) in about 30 s instead of hours,
                # and a connect timeout gives up a host that does not answer.
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn, **_db.defaults_missing_from(self._dsn) | {"autocommit": True}
                )
                await self._conn.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(self._notify_channel))
                )
                self.connected.set()
                if lost:
                    self._on_restored()
                    lost = False
                delay = RECONNECT_DELAY_MIN_S
                self._on_wakeup()  # catch up on whatever was enqueued while not listening
                async for notify in self._conn.notifies():
                    if notify.payload in self._job_channels:
                        self._on_wakeup()
                    elif notify.payload.startswith(CANCEL_PREFIX):
                        cancel = parse_cancel(notify.payload, self._worker_id())
                        if cancel is not None:
                            self._on_cancel(*cancel)
                raise psycopg.OperationalError("the LISTEN connection was closed")
            except psycopg.Error as exc:
                self.connected.clear()
                if not lost:
                    lost = True
                    self._on_lost(_db.redact(str(exc).strip() or type(exc).__name__))
                await self._close()
                await asyncio.sleep(delay)
                delay = min(RECONNECT_DELAY_MAX_S, delay * 2)
            except asyncio.CancelledError:
                await self._close()
                raise

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except psycopg.Error:
                logger.debug("error while closing the LISTEN connection", exc_info=True)

    @property
    def backend_pid(self) -> int | None:
        """The server process of the LISTEN connection (tests terminate it)."""
        conn = self._conn
        if conn is None or conn.closed:
            return None
        return conn.info.backend_pid
