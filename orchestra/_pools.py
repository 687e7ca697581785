"""The connection pools of one queue: a sync pool, and an async pool per event loop.

Pools open on first use, so building a Config connects nothing. An async pool
belongs to the event loop that opened it (psycopg's async connections cannot
move between loops); it is forgotten with its loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from orchestra import _db

#: How long opening a pool may wait for its first connection, in seconds.
OPEN_TIMEOUT_S = 30


class Pools:
    """The pools orchestra opens for one queue, or the sync pool the application passed in.

    Args:
        dsn: returns the DSN to connect to (resolved on first use).
        attempts: connection attempts of the probe that precedes a pool.
        max_size: connections in each pool opened here.
        name: the pools' name, in psycopg_pool's logs.
        user_pool: the application's pool for sync calls; never closed here.
    """

    def __init__(
        self,
        dsn: Callable[[], str],
        *,
        attempts: int,
        max_size: int,
        name: str,
        user_pool: ConnectionPool[Any] | None = None,
    ) -> None:
        self._dsn = dsn
        self._attempts = attempts
        self._max_size = max_size
        self._name = name
        self._user_pool = user_pool
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._async_pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, AsyncConnectionPool[Any]
        ] = weakref.WeakKeyDictionary()

    def sync_pool(self) -> ConnectionPool[Any]:
        """The sync pool, opened on the first call."""
        if self._user_pool is not None:
            return self._user_pool
        with self._lock:
            if self._pool is None:
                # A first connection with retries turns "server down" into a
                # readable DatabaseUnavailableError instead of a pool timeout.
                _db.connect(self._dsn(), attempts=self._attempts).close()
                self._pool = ConnectionPool(
                    self._dsn(),
                    min_size=1,
                    max_size=self._max_size,
                    kwargs=dict(_db.CONNECT_KWARGS),
                    open=False,
                    name=self._name,
                )
                self._pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
            return self._pool

    async def async_pool(self) -> AsyncConnectionPool[Any]:
        """The running event loop's async pool, opened on its first call there."""
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is None:
            # The same readable error as sync_pool when the server is down.
            probe = await _db.connect_async(self._dsn(), attempts=self._attempts)
            await probe.close()
            pool = AsyncConnectionPool(
                self._dsn(),
                min_size=1,
                max_size=self._max_size,
                kwargs=dict(_db.CONNECT_KWARGS),
                open=False,
                name=f"{self._name}-async",
            )
            await pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
            self._async_pools[loop] = pool
        return pool

    def close(self) -> None:
        """Close the sync pool opened here (not the application's)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    async def close_async(self) -> None:
        """Close the running event loop's async pool, then the sync pool."""
        pool = self._async_pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()
        self.close()
