"""Config: the application's handle on one queue, its definitions and its jobs.

The connection machinery lives in :mod:`orchestra._database` (below the
definitions, which are written against it); Config adds what needs the layers
above it: the registry typed as JobDefinitions, and the management API.
"""

from __future__ import annotations

import functools
from typing import Any

from orchestra._database import Database
from orchestra._definition import JobDefinition
from orchestra._jobs import AsyncJobs, Jobs


class Config(Database[JobDefinition[Any]]):
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

    @functools.cached_property
    def jobs(self) -> Jobs:
        """Find, list, retry, cancel and delete jobs; describe definitions."""
        return Jobs(self)

    @functools.cached_property
    def jobs_async(self) -> AsyncJobs:
        """Async twin of :attr:`jobs`, on this event loop's async pool."""
        return AsyncJobs(self)
