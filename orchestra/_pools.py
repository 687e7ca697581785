"""The connection pools of one queue: a sync pool, and an async pool per event loop.

Pools open on first use, so building a Config connects nothing, and read the
DSN, the pool size, the connection attempts and arguments from the Database when they
open (so that those settings may change until then, as before). An async pool
belongs to the event loop that opened it (psycopg's async connections cannot
move between loops); it is forgotten with its loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Protocol

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from orchestra import _db

#: How long opening a pool may wait for its first connection, in seconds.
OPEN_TIMEOUT_S = 30


class PoolSettings(Protocol):
    """What opening a pool reads (a Database)."""

    @property
    def dsn(self) -> str: ...

    @property
    def pool_max_size(self) -> int: ...

    @property
    def connect_attempts(self) -> int: ...

    @property
    def connect_kwargs(self) -> dict[str, Any]: ...


class LoopLocks:
    """One asyncio.Lock per event loop, forgotten with its loop.

    An asyncio.Lock serves the tasks of one loop only, and an object shared by
    several loops (a Config used from several threads' loops) needs one each.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._guard = threading.Lock()  # the loops may run in different threads

    def lock(self) -> asyncio.Lock:
        """The running event loop's lock."""
        loop = asyncio.get_running_loop()
        with self._guard:
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
            return lock


class Pools:
    """The pools orchestra opens for one queue, or the sync pool the application passed in.

    The Database is passed to each call rather than kept, so that the two do
    not refer to each other (a Database is then freed by reference counting).

    Args:
        name: the pools' name, in psycopg_pool's logs.
        user_pool: the application's pool for sync calls; never closed here.
    """

    def __init__(self, *, name: str, user_pool: ConnectionPool[Any] | None = None) -> None:
        self._name = name
        self._user_pool = user_pool
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._async_pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, AsyncConnectionPool[Any]
        ] = weakref.WeakKeyDictionary()
        self._async_locks = LoopLocks()

    def sync_pool(self, settings: PoolSettings) -> ConnectionPool[Any]:
        """The sync pool, opened on the first call."""
        if self._user_pool is not None:
            return self._user_pool
        pool = self._pool
        if pool is not None:  # without the lock: every defer passes here
            return pool
        with self._lock:
            if self._pool is None:
                dsn = settings.dsn
                # A first connection with retries turns "server down" into a
                # readable DatabaseUnavailableError instead of a pool timeout.
                kwargs = settings.connect_kwargs
                _db.connect(dsn, attempts=settings.connect_attempts, **kwargs).close()
                pool = ConnectionPool(
                    dsn,
                    min_size=1,
                    max_size=settings.pool_max_size,
                    kwargs=kwargs,
                    open=False,
                    name=self._name,
                )
                pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
                self._pool = pool
            return self._pool

    async def async_pool(self, settings: PoolSettings) -> AsyncConnectionPool[Any]:
        """The running event loop's async pool, opened on its first call there.

        Concurrent first calls on one loop open one pool: the others wait for
        it (each opening its own would leak all but the last registered).
        """
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is not None:
            return pool
        async with self._async_locks.lock():
            pool = self._async_pools.get(loop)
            if pool is None:
                dsn = settings.dsn
                # The same readable error as sync_pool when the server is down.
                kwargs = settings.connect_kwargs
                probe = await _db.connect_async(dsn, attempts=settings.connect_attempts, **kwargs)
                await probe.close()
                pool = AsyncConnectionPool(
                    dsn,
                    min_size=1,
                    max_size=settings.pool_max_size,
                    kwargs=kwargs,
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
        async with self._async_locks.lock():  # not while a first call opens it
            pool = self._async_pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()
        self.close()
