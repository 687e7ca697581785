"""Config: where the queue lives (DSN, schema), its connection pools, its definitions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from orchestra import _db, _embedded, _migrate, _sql
from orchestra.errors import ConfigurationError

if TYPE_CHECKING:
    from orchestra._definition import JobDefinition
    from orchestra._jobs import AsyncJobs, Jobs

DEFAULT_SCHEMA = "_queue"
MAX_PAYLOAD_BYTES_DEFAULT = 1024 * 1024
POOL_MAX_SIZE_DEFAULT = 10
DSN_ENV = "ORCHESTRA_DSN"


def notify_channel_for(schema: str) -> str:
    """The PostgreSQL NOTIFY channel that wakes the workers of ``schema``.

    Channel names are identifiers (at most 63 bytes): long schema names are hashed.
    """
    name = f"orchestra_{schema}"
    if len(name) <= 63:
        return name
    return "orchestra_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


def finished_channel_for(schema: str) -> str:
    """The NOTIFY channel that tells result waiters which jobs of ``schema`` were finalized.

    The payload is a comma-separated list of job ids, or empty when the list
    would not fit in a notification: waiters then look up their own job.
    """
    name = f"orchestra_done_{schema}"
    if len(name) <= 63:
        return name
    return "orchestra_done_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


class Config:
    """Where the queue lives and how to reach it.

    Args:
        dsn: a libpq connection string or URI. Without one, ``ORCHESTRA_DSN`` is
            used, and without that the embedded PostgreSQL (extra ``embedded``).
        pool: a psycopg_pool ConnectionPool of your own, used for synchronous
            calls (orchestra never closes it); its conninfo serves as the DSN.
        schema: the PostgreSQL schema that holds the queue's tables.
        max_payload_bytes: the largest JSON payload ``defer`` accepts.
        pool_max_size: connections in each pool orchestra opens itself.
        connect_attempts: connection attempts before DatabaseUnavailableError.

    A Config is cheap to build: nothing connects until the first use.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        schema: str = DEFAULT_SCHEMA,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES_DEFAULT,
        pool_max_size: int = POOL_MAX_SIZE_DEFAULT,
        connect_attempts: int = 5,
    ) -> None:
        self.schema: str = _sql.validate_schema_name(schema)
        if dsn is not None and (not isinstance(dsn, str) or not dsn.strip()):
            raise ConfigurationError("dsn", "must be a non-empty connection string or None")
        if pool is not None and not isinstance(pool, ConnectionPool):
            raise ConfigurationError(
                "pool", f"must be a psycopg_pool.ConnectionPool, not {type(pool).__name__}"
            )
        for argument, value, minimum in (
            ("max_payload_bytes", max_payload_bytes, 2),
            ("pool_max_size", pool_max_size, 1),
            ("connect_attempts", connect_attempts, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(argument, f"must be an int >= {minimum}, got {value!r}")
        self._dsn = dsn
        self._user_pool = pool
        self.max_payload_bytes = max_payload_bytes
        self.pool_max_size = pool_max_size
        self.connect_attempts = connect_attempts
        self.queries = _sql.Queries(self.schema)
        self.notify_channel = notify_channel_for(self.schema)
        self.finished_channel = finished_channel_for(self.schema)
        self._definitions: dict[str, JobDefinition[Any]] = {}
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._async_pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, AsyncConnectionPool[Any]
        ] = weakref.WeakKeyDictionary()
        self._resolved_dsn: str | None = None

    # -- connection ---------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The DSN in use (resolving ORCHESTRA_DSN or starting the embedded server on first use)."""
        if self._resolved_dsn is None:
            if self._dsn is not None:
                self._resolved_dsn = self._dsn
            elif self._user_pool is not None:
                conninfo = self._user_pool.conninfo
                self._resolved_dsn = conninfo() if callable(conninfo) else conninfo
            elif os.environ.get(DSN_ENV, "").strip():
                self._resolved_dsn = os.environ[DSN_ENV].strip()
            else:
                self._resolved_dsn = _embedded.embedded_dsn()
        return self._resolved_dsn

    @property
    def redacted_dsn(self) -> str:
        """The DSN with its password replaced by ``***``."""
        return _db.redact_dsn(self.dsn)

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection of your own (you close it), with bounded retries."""
        return _db.connect(self.dsn, attempts=self.connect_attempts)

    async def connect_async(self) -> psycopg.AsyncConnection[Any]:
        """Async twin of :meth:`connect`."""
        return await _db.connect_async(self.dsn, attempts=self.connect_attempts)

    def _sync_pool(self) -> ConnectionPool[Any]:
        if self._user_pool is not None:
            return self._user_pool
        with self._lock:
            if self._pool is None:
                # A first connection with retries turns "server down" into a
                # readable DatabaseUnavailableError instead of a pool timeout.
                self.connect().close()
                self._pool = ConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=self.pool_max_size,
                    kwargs=dict(_db.CONNECT_KWARGS),
                    open=False,
                    name=f"orchestra-{self.schema}",
                )
                self._pool.open(wait=True, timeout=30)
            return self._pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a pooled autocommit connection."""
        with self._sync_pool().connection() as conn:
            yield conn

    async def _async_pool(self) -> AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is None:
            probe = await self.connect_async()  # readable error when the server is down
            await probe.close()
            pool = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self.pool_max_size,
                kwargs=dict(_db.CONNECT_KWARGS),
                open=False,
                name=f"orchestra-{self.schema}-async",
            )
            await pool.open(wait=True, timeout=30)
            self._async_pools[loop] = pool
        return pool

    @contextlib.asynccontextmanager
    async def connection_async(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Borrow a pooled autocommit connection from this event loop's async pool."""
        pool = await self._async_pool()
        async with pool.connection() as conn:
            yield conn

    def close(self) -> None:
        """Close the pools orchestra opened (not a pool you passed in)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    async def close_async(self) -> None:
        """Close this event loop's async pool and the sync pool."""
        loop = asyncio.get_running_loop()
        pool = self._async_pools.pop(loop, None)
        if pool is not None:
            await pool.close()
        self.close()

    def __enter__(self) -> Config:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema -------------------------------------------------------------

    def prepare_schema(self) -> list[str]:
        """Create or upgrade the queue schema; idempotent. Returns the migrations applied."""
        with self.connection() as conn:
            return [f"{m.version:04d}_{m.name}" for m in _migrate.migrate(conn, self.schema)]

    def check_schema(self) -> None:
        """Raise SchemaNotReadyError unless the schema is migrated to this version."""
        with self.connection() as conn:
            _migrate.check(conn, self.schema)

    # -- registry -----------------------------------------------------------

    def register(self, definition: JobDefinition[Any]) -> None:
        """Add a definition (JobDefinition does this itself); the last one of a name wins."""
        with self._lock:
            self._definitions[definition.name] = definition

    @property
    def definitions(self) -> Mapping[str, JobDefinition[Any]]:
        """The definitions registered in this process, by name."""
        return dict(self._definitions)

    # -- management ---------------------------------------------------------

    @functools.cached_property
    def jobs(self) -> Jobs:
        """Find, list, retry, cancel and delete jobs; describe definitions."""
        from orchestra._jobs import Jobs  # noqa: PLC0415 (loaded on first use)

        return Jobs(self)

    @functools.cached_property
    def jobs_async(self) -> AsyncJobs:
        """Async twin of :attr:`jobs`, on this event loop's async pool."""
        from orchestra._jobs import AsyncJobs  # noqa: PLC0415 (loaded on first use)

        return AsyncJobs(self)

    def __repr__(self) -> str:
        dsn = _db.redact_dsn(self._resolved_dsn or self._dsn or "") or "<unresolved>"
        return f"Config(dsn={dsn!r}, schema={self.schema!r}, definitions={len(self._definitions)})"
