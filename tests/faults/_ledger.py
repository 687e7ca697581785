"""The fault battery's job definitions, and the ledger their functions write.

Every execution of a job function inserts a row into ``<schema>.fault_ledger``
when it starts and completes it when it returns or raises:

    fault_ledger(id, job_id, definition, attempt, pid, started, finished, outcome)

``outcome`` is what the function did (``succeeded`` or ``failed``); ``finished``
and ``outcome`` stay NULL when the process died meanwhile. The ledger is
written on a connection of its own, in autocommit, so an execution is counted
even when the worker dies right after the function returned and its finish is
never recorded, and whatever happens to the daemon's own connections. Those
ledger connections say ``application_name = orchestra-faults-ledger``; the
daemons' own say :func:`daemon_application_name` (see
:mod:`tests.faults._ledger_app`), so a case can terminate one kind and not the
other.

Everything is module level and builds no Config on import, so that the
children of ``orchestra daemon --processes N`` can import the functions.

Payloads (plain JSON, every key optional): ``sleep_ms`` keeps the function
busy that long (so faults land mid-run); ``fail_attempts`` makes attempts
``1..fail_attempts`` raise after sleeping (retries).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from orchestra import Config, JobContext, JobDefinition
from orchestra._database import Database

CHANNEL = "faults"
#: The daemons' application_name, before the schema (see :func:`daemon_application_name`).
DAEMON_APPLICATION_NAME = "orchestra-faults-daemon"
#: The application_name of the ledger's own connections.
LEDGER_APPLICATION_NAME = "orchestra-faults-ledger"
#: The lease of every job. Short, so that the jobs of a killed or stopped
#: worker come back within seconds; heartbeats extend it every third of it.
LOCK_INTERVAL_MS = 2_000
#: The attempts of ``retried`` and ``keyed``: enough that repeated crashes
#: of the same job do not exhaust them in a case.
MANY_ATTEMPTS = 20
#: The repeat definition's period.
TICK_INTERVAL_MS = 1_000
#: The rate limit of ``limited``: at most one start per this many ms, fleet-wide.
RELEASE_INTERVAL_MS = 100
#: The concurrency cap of ``capped``, fleet-wide.
MAX_CONCURRENCY = 3
#: How often a ledger write is tried before the job function gives up.
LEDGER_WRITE_TRIES = 20

_LOCAL = threading.local()


def daemon_application_name(schema: str) -> str:
    """The application_name of the daemons of the case on ``schema`` (set by the app).

    One per schema, so that a case terminating its daemons' connections never
    touches those of a case running next to it.
    """
    return f"{DAEMON_APPLICATION_NAME}:{schema}"


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create ``fault_ledger`` in ``schema`` (which must exist)."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.fault_ledger ("
            " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " job_id bigint NOT NULL, definition text NOT NULL, attempt integer NOT NULL,"
            " pid integer NOT NULL,"
            " started timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " finished timestamptz NULL,"
            " outcome text NULL CHECK (outcome IN ('succeeded', 'failed')))"
        ).format(sql.Identifier(schema))
    )
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS fault_ledger_job_idx ON {}.fault_ledger (job_id)"
        ).format(sql.Identifier(schema))
    )


def _ledger_write(config: Database[Any], query: sql.Composed, params: tuple[Any, ...]) -> Any:
    """Run one autocommit statement on this thread's ledger connection.

    The connection is kept per thread (jobs run by the thousand) and made again
    when it broke: the ledger must record the execution even while a case
    terminates connections, or the battery would blame the queue for it. It
    goes where the queue's connections go, with their arguments: behind a
    transaction pooler, no prepared statements either.
    """
    for attempt in range(LEDGER_WRITE_TRIES):
        conn: psycopg.Connection[Any] | None = getattr(_LOCAL, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(
                    config.dsn,
                    application_name=LEDGER_APPLICATION_NAME,
                    **config.connect_kwargs | {"autocommit": True},
                )
                _LOCAL.conn = conn
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            _LOCAL.conn = None
            if attempt == LEDGER_WRITE_TRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))  # back off while the server is away
    raise AssertionError("unreachable")


def run(payload: dict[str, Any] | None, ctx: JobContext) -> dict[str, Any]:
    """Record the execution, work for ``sleep_ms``, fail the first ``fail_attempts``."""
    payload = payload or {}
    config = ctx.definition.config
    table = sql.SQL("{}.fault_ledger").format(sql.Identifier(config.schema))
    row_id = _ledger_write(
        config,
        sql.SQL(
            "INSERT INTO {} (job_id, definition, attempt, pid) VALUES (%s, %s, %s, %s) RETURNING id"
        ).format(table),
        (ctx.job_id, ctx.definition.name, ctx.attempt, os.getpid()),
    )
    sleep_ms = int(payload.get("sleep_ms", 0))
    if sleep_ms:
        time.sleep(sleep_ms / 1000)  # the job's "work", so that faults land mid-run
    failing = ctx.attempt <= int(payload.get("fail_attempts", 0))
    _ledger_write(
        config,
        sql.SQL(
            "UPDATE {} SET finished = clock_timestamp(), outcome = %s WHERE id = %s RETURNING id"
        ).format(table),
        ("failed" if failing else "succeeded", row_id),
    )
    if failing:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return {"job_id": ctx.job_id, "attempt": ctx.attempt, "pid": os.getpid()}


def define(config: Config, *, ticks: bool = False) -> dict[str, JobDefinition[Any]]:
    """Register the battery's definitions on ``config``; the same in the app and in the tests.

    All run :func:`run` on channel :data:`CHANNEL`:

    * ``once``: one attempt (a job that fails must have run);
    * ``retried``: :data:`MANY_ATTEMPTS` attempts, retried at once;
    * ``tick``: repeats every :data:`TICK_INTERVAL_MS` (one attempt), only
      with ``ticks`` (an orchestrator carrying it enqueues a job every second);
    * ``limited``: at most one start per :data:`RELEASE_INTERVAL_MS`, fleet-wide;
    * ``capped``: at most :data:`MAX_CONCURRENCY` running at once, fleet-wide;
    * ``keyed``: for jobs deferred with a ``resource_key`` (one running per key).
    """
    common: dict[str, Any] = {
        "job_function": run,
        "channel": CHANNEL,
        "lock_interval_ms": LOCK_INTERVAL_MS,
    }
    retried: dict[str, Any] = {"num_attempts": MANY_ATTEMPTS, "backoff": "none"}
    definitions: dict[str, JobDefinition[Any]] = {
        "once": JobDefinition(config, name="once", num_attempts=1, **common),
        "retried": JobDefinition(config, name="retried", **retried, **common),
        "limited": JobDefinition(
            config, name="limited", release_interval_ms=RELEASE_INTERVAL_MS, **retried, **common
        ),
        "capped": JobDefinition(
            config, name="capped", max_concurrency=MAX_CONCURRENCY, **retried, **common
        ),
        "keyed": JobDefinition(config, name="keyed", **retried, **common),
    }
    if ticks:
        definitions["tick"] = JobDefinition(
            config, name="tick", repeat_interval_ms=TICK_INTERVAL_MS, **common
        )
    return definitions
