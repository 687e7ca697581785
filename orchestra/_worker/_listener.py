"""The worker's LISTEN connection: wake-ups on enqueue, with reconnection.

NOTIFY is only a hint: notifications sent while the connection is down are
lost, so every (re)connection is followed by a catch-up poll, and the worker
polls every ``process_interval_ms`` regardless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from orchestra import _db

logger = logging.getLogger("orchestra.worker")

RECONNECT_DELAY_MIN_S = 0.5
RECONNECT_DELAY_MAX_S = 30.0
#: TCP keepalives notice a LISTEN connection whose peer vanished without a
#: FIN (a network partition, a killed VM) in about 30 s instead of hours.
KEEPALIVE_KWARGS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 4,
}


class Listener:
    """Keeps a LISTEN connection open and calls ``on_wakeup`` for notifications of its channels.

    A notification's payload is the job channel it announces (see
    producer.sql): one of the worker's channels wakes it, any other does not.
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
    ) -> None:
        self._dsn = dsn
        self._notify_channel = notify_channel
        self._job_channels = frozenset(job_channels)
        self._on_wakeup = on_wakeup
        self._on_lost = on_lost
        self._on_restored = on_restored
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled."""
        delay = RECONNECT_DELAY_MIN_S
        lost = False
        while True:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, **KEEPALIVE_KWARGS
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
