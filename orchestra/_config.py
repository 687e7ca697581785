"""Config: the application's handle on one queue, its definitions and its jobs.

The connection machinery lives in :mod:`orchestra._database` and the
management API in :mod:`orchestra._jobs` (below the definitions, which are
written against them); Config adds what needs the layer above them: the
registry typed as JobDefinitions.
"""

from __future__ import annotations

from typing import Any

from orchestra._definition import JobDefinition
from orchestra._jobs import ManagedDatabase


class Config(ManagedDatabase[JobDefinition[Any]]):
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
        transaction_pooling: True when ``dsn`` leads to a transaction pooler
            (PgBouncer's ``pool_mode = transaction``): no server-side prepared
            statements, and no LISTEN on ``dsn``. Without it,
            ``ORCHESTRA_TRANSACTION_POOLING`` (``1``/``true``/``yes``/``on``).
        listen_dsn: a direct connection to the same database for the LISTEN
            connections (workers' wake-ups, result waits), for when ``dsn``
            leads to a transaction pooler. Without it, ``ORCHESTRA_LISTEN_DSN``;
            without either, a transaction-pooled Config polls instead.

    A Config is cheap to build: nothing connects until the first use.
    ``config.jobs`` and ``config.jobs_async`` find, list, retry, cancel and
    delete jobs.
    """
