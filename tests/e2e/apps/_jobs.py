"""The job definitions of the e2e test apps, shared by the apps and the tests.

Every job function records its execution on a separate autocommit connection:

* ``ledger(job_id, attempt, pid, started, finished)``: one row per execution,
  inserted when the job function starts, ``finished`` set when it returns;
* ``gate(name)``: a job whose payload has ``{"gate": name}`` blocks until a row
  with that name exists (forever if none is ever inserted).

So what really ran is visible even when the job's own finish is refused or
never written. The DSN and schema come from the job's Config.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg
from psycopg import sql

from orchestra import Config, JobContext, JobDefinition

#: How often a gated job looks for its gate row.
GATE_POLL_S = 0.02
#: The lease of every e2e job; heartbeats extend it every third of it.
LOCK_INTERVAL_MS = 1_000


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the ``ledger`` and ``gate`` tables in ``schema`` (which must exist)."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.ledger ("
            " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " job_id bigint NOT NULL, attempt integer NOT NULL, pid integer NOT NULL,"
            " started timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " finished timestamptz NULL)"
        ).format(sql.Identifier(schema))
    )
    conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {}.gate (name text PRIMARY KEY)").format(
            sql.Identifier(schema)
        )
    )


def record(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Log the execution in the ledger, wait for the payload's gate if any, then return."""
    config = ctx.definition.config
    schema = sql.Identifier(config.schema)
    with psycopg.connect(config.dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {}.ledger (job_id, attempt, pid) VALUES (%s, %s, %s) RETURNING id"
            ).format(schema),
            (ctx.job_id, ctx.attempt, os.getpid()),
        ).fetchone()
        assert row is not None
        gate = payload.get("gate")
        if gate is not None:
            query = sql.SQL("SELECT 1 FROM {}.gate WHERE name = %s").format(schema)
            while conn.execute(query, (gate,)).fetchone() is None:
                time.sleep(GATE_POLL_S)
        conn.execute(
            sql.SQL("UPDATE {}.ledger SET finished = clock_timestamp() WHERE id = %s").format(
                schema
            ),
            (row[0],),
        )
    return {"job_id": ctx.job_id, "attempt": ctx.attempt, "pid": os.getpid()}


async def record_async(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The ``async def`` twin of :func:`record`, run on the worker's event loop."""
    config = ctx.definition.config
    schema = sql.Identifier(config.schema)
    async with await psycopg.AsyncConnection.connect(config.dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            sql.SQL(
                "INSERT INTO {}.ledger (job_id, attempt, pid) VALUES (%s, %s, %s) RETURNING id"
            ).format(schema),
            (ctx.job_id, ctx.attempt, os.getpid()),
        )
        row = await cursor.fetchone()
        assert row is not None
        gate = payload.get("gate")
        if gate is not None:
            query = sql.SQL("SELECT 1 FROM {}.gate WHERE name = %s").format(schema)
            while True:
                if await (await conn.execute(query, (gate,))).fetchone() is not None:
                    break
                await asyncio.sleep(GATE_POLL_S)
        await conn.execute(
            sql.SQL("UPDATE {}.ledger SET finished = clock_timestamp() WHERE id = %s").format(
                schema
            ),
            (row[0],),
        )
    return {"job_id": ctx.job_id, "attempt": ctx.attempt, "pid": os.getpid()}


LIMITED_RELEASE_INTERVAL_MS = 300


def define(config: Config) -> dict[str, JobDefinition[Any]]:
    """Register the e2e definitions on ``config``; the same in the app and in the tests.

    * ``quick``: one attempt;
    * ``gated``: three attempts, retried at once (for jobs that must survive a stop);
    * ``gated_once``: one attempt;
    * ``gated_async``: like ``gated``, but runs :func:`record_async` on the event loop;
    * ``limited``: at most one start per LIMITED_RELEASE_INTERVAL_MS, fleet-wide.

    The others run :func:`record` (in the worker's thread pool).
    """
    return {
        "quick": JobDefinition(
            config, name="quick", job_function=record, lock_interval_ms=LOCK_INTERVAL_MS
        ),
        "gated": JobDefinition(
            config,
            name="gated",
            job_function=record,
            num_attempts=3,
            backoff="none",
            lock_interval_ms=LOCK_INTERVAL_MS,
        ),
        "gated_once": JobDefinition(
            config,
            name="gated_once",
            job_function=record,
            num_attempts=1,
            lock_interval_ms=LOCK_INTERVAL_MS,
        ),
        "gated_async": JobDefinition(
            config,
            name="gated_async",
            job_function=record_async,
            num_attempts=3,
            backoff="none",
            lock_interval_ms=LOCK_INTERVAL_MS,
        ),
        "limited": JobDefinition(
            config,
            name="limited",
            job_function=record,
            release_interval_ms=LIMITED_RELEASE_INTERVAL_MS,
            lock_interval_ms=LOCK_INTERVAL_MS,
        ),
    }
