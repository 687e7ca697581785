"""One queue's database: where it lives, how to reach it, what to say to it.

:class:`Database` is the bottom of everything that talks to PostgreSQL: the
DSN (given, from ``ORCHESTRA_DSN``, or the embedded server), the schema, its
pools, its rendered queries and channel names, its migrations, and the
definitions registered with it. :class:`orchestra.Config` is a Database whose
definitions are JobDefinitions, with the management API on top; everything
between the two (definitions, handles, management) is written against this
class, so that the arrows between modules point down only.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Generic, Protocol, Self

import psycopg
from psycopg_pool import ConnectionPool
from typing_extensions import TypeVar

from orchestra import _db, _embedded, _migrate, _sql
from orchestra._checks import is_int
from orchestra._pools import Pools
from orchestra._schema_names import finished_channel_for, notify_channel_for
from orchestra.errors import ConfigurationError

DEFAULT_SCHEMA = "_queue"
MAX_PAYLOAD_BYTES_DEFAULT = 1024 * 1024
POOL_MAX_SIZE_DEFAULT = 10
DSN_ENV = "ORCHESTRA_DSN"
#: Where a Config without ``listen_dsn`` finds one.
LISTEN_DSN_ENV = "ORCHESTRA_LISTEN_DSN"
#: Where a Config without ``transaction_pooling`` finds it (1/true/yes/on, 0/false/no/off).
TRANSACTION_POOLING_ENV = "ORCHESTRA_TRANSACTION_POOLING"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class Named(Protocol):
    """What a registered definition must have: its name."""

    @property
    def name(self) -> str: ...


#: What a Database registers (JobDefinition, for orchestra.Config).
D = TypeVar("D", bound=Named, default=Any)


def resolve_dsn(dsn: str | None, pool: ConnectionPool[Any] | None) -> str:
    """The DSN given, else the pool's, else ``ORCHESTRA_DSN``, else the embedded server's."""
    if dsn is not None:
        return dsn
    if pool is not None:
        conninfo = pool.conninfo
        return conninfo() if callable(conninfo) else conninfo
    from_environment = os.environ.get(DSN_ENV, "").strip()
    if from_environment:
        return from_environment
    return _embedded.embedded_dsn()


def resolve_transaction_pooling(given: bool | None) -> bool:
    """``transaction_pooling`` as given, else from ``ORCHESTRA_TRANSACTION_POOLING``, else False."""
    if given is not None:
        if not isinstance(given, bool):
            raise ConfigurationError(
                "transaction_pooling", f"must be True, False or None, got {given!r}"
            )
        return given
    text = os.environ.get(TRANSACTION_POOLING_ENV, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(
        f"${TRANSACTION_POOLING_ENV}",
        f"must be one of 1, true, yes, on, 0, false, no, off; got {text!r}",
    )


def resolve_listen_dsn(given: str | None) -> str | None:
    """``listen_dsn`` as given (checked), else ``ORCHESTRA_LISTEN_DSN``, else None."""
    if given is not None:
        if not isinstance(given, str) or not given.strip():
            raise ConfigurationError("listen_dsn", "must be a non-empty connection string or None")
        _db.check_dsn(given, parameter="listen_dsn")
        return given
    from_environment = os.environ.get(LISTEN_DSN_ENV, "").strip()
    if not from_environment:
        return None
    _db.check_dsn(from_environment, parameter=f"${LISTEN_DSN_ENV}")
    return from_environment


class Database(Generic[D]):
    """Where a queue lives and how to reach it; see :class:`orchestra.Config` for the arguments.

    Nothing connects until the first use.
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
        transaction_pooling: bool | None = None,
        listen_dsn: str | None = None,
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
            if not is_int(value) or value < minimum:
                raise ConfigurationError(argument, f"must be an int >= {minimum}, got {value!r}")
        self.transaction_pooling: bool = resolve_transaction_pooling(transaction_pooling)
        self._listen_dsn = resolve_listen_dsn(listen_dsn)
        _db.remember_dsn(self._listen_dsn)
        self._dsn = dsn
        self._user_pool = pool
        self.max_payload_bytes = max_payload_bytes
        self.pool_max_size = pool_max_size
        self.connect_attempts = connect_attempts
        self.queries = _sql.Queries(self.schema)
        self.notify_channel = notify_channel_for(self.schema)
        self.finished_channel = finished_channel_for(self.schema)
        self._resolved_dsn: str | None = None
        # The pools read dsn, pool_max_size and connect_attempts from here
        # when they open, not now.
        self._pools = Pools(name=f"orchestra-{self.schema}", user_pool=pool)
        self._definitions: dict[str, D] = {}
        self._definitions_lock = threading.Lock()

    # -- connection ---------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The DSN in use (resolving ORCHESTRA_DSN or starting the embedded server on first use)."""
        if self._resolved_dsn is None:
            self._resolved_dsn = resolve_dsn(self._dsn, self._user_pool)
        return self._resolved_dsn

    @property
    def redacted_dsn(self) -> str:
        """The DSN with its password replaced by ``***``."""
        return _db.redact_dsn(self.dsn)

    @property
    def connect_kwargs(self) -> dict[str, Any]:
        """The psycopg connection arguments of every connection to :attr:`dsn`.

        Autocommit; a connect timeout (10 s) and TCP keepalives (a dead peer
        noticed in about 30 s) where the DSN sets none; and behind a
        transaction pooler no server-side prepared statements
        (``prepare_threshold=None``): PgBouncer before 1.21 hands each
        transaction to any server connection, where a statement prepared on
        another one does not exist.
        """
        kwargs = _db.defaults_missing_from(self.dsn) | _db.CONNECT_KWARGS
        if self.transaction_pooling:
            kwargs["prepare_threshold"] = None
        return kwargs

    @property
    def listen_dsn(self) -> str | None:
        """Where LISTEN connections go, or None where they cannot: then waits poll.

        ``listen_dsn`` if one was given (or is in ``ORCHESTRA_LISTEN_DSN``);
        else :attr:`dsn`, unless it leads to a transaction pooler, which
        carries no LISTEN from one transaction to the next.
        """
        if self._listen_dsn is not None:
            return self._listen_dsn
        return None if self.transaction_pooling else self.dsn

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection of your own (you close it), with bounded retries."""
        return _db.connect(self.dsn, attempts=self.connect_attempts, **self.connect_kwargs)

    async def connect_async(self) -> psycopg.AsyncConnection[Any]:
        """Async twin of :meth:`connect`."""
        return await _db.connect_async(
            self.dsn, attempts=self.connect_attempts, **self.connect_kwargs
        )

    def connect_listener(self) -> psycopg.Connection[Any] | None:
        """A new autocommit connection to :attr:`listen_dsn` (you close it), or None without one."""
        listen_dsn = self.listen_dsn
        if listen_dsn is None:
            return None
        return _db.connect(
            listen_dsn, attempts=self.connect_attempts, **_db.defaults_missing_from(listen_dsn)
        )

    async def connect_listener_async(self) -> psycopg.AsyncConnection[Any] | None:
        """Async twin of :meth:`connect_listener`."""
        listen_dsn = self.listen_dsn
        if listen_dsn is None:
            return None
        return await _db.connect_async(
            listen_dsn, attempts=self.connect_attempts, **_db.defaults_missing_from(listen_dsn)
        )

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a pooled autocommit connection."""
        with self._pools.sync_pool(self).connection() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def connection_async(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Borrow a pooled autocommit connection from this event loop's async pool."""
        pool = await self._pools.async_pool(self)
        async with pool.connection() as conn:
            yield conn

    def close(self) -> None:
        """Close the pools orchestra opened (not a pool you passed in)."""
        self._pools.close()

    async def close_async(self) -> None:
        """Close this event loop's async pool and the sync pool."""
        await self._pools.close_async()

    def __enter__(self) -> Self:
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

    def register(self, definition: D) -> None:
        """Add a definition (JobDefinition does this itself); the last one of a name wins."""
        with self._definitions_lock:
            self._definitions[definition.name] = definition

    @property
    def definitions(self) -> Mapping[str, D]:
        """The definitions registered in this process, by name."""
        return dict(self._definitions)

    def __repr__(self) -> str:
        dsn = _db.redact_dsn(self._resolved_dsn or self._dsn or "") or "<unresolved>"
        pooling = ", transaction_pooling=True" if self.transaction_pooling else ""
        listen = f", listen_dsn={_db.redact_dsn(self._listen_dsn)!r}" if self._listen_dsn else ""
        return (
            f"{type(self).__name__}(dsn={dsn!r}, schema={self.schema!r}{pooling}{listen}, "
            f"definitions={len(self._definitions)})"
        )
