"""Finish jobs by SQL in tests of the management API: move a job into ``job_history``.

A finished job is a row of ``job_history`` (decision 0019), not a status of
the hot table (a CHECK there refuses finished statuses). Tests about reading
and managing jobs put a job in a final state with :func:`finish_by_sql`, the
way the finishing statements of ``orchestra/sql/worker.sql`` and ``orchestrator.sql`` do: the hot row is
deleted, its attempt-log rows become the history row's ``attempts`` JSON.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from orchestra import Config

FINISHED = ("succeeded", "failed", "cancelled")

_MOVE = """
WITH moved AS (
    DELETE FROM {s}.job j WHERE j.id = %(id)s RETURNING j.*
), earlier AS (
    DELETE FROM {s}.job_attempt a USING moved m WHERE a.job_id = m.id RETURNING a.*
)
INSERT INTO {s}.job_history (
    id, definition, channel, status, priority, payload, result, attempt, max_attempts, run_at,
    unique_key, resource_key, tick_at, created_at, started_at, finalized_at, last_error,
    attempts, trace_context, created_by, tags, meta, progress)
SELECT m.id, m.definition, m.channel, %(status)s::{s}.job_status, m.priority, m.payload, NULL,
       m.attempt, m.max_attempts, m.run_at, m.unique_key, m.resource_key, m.tick_at,
       m.created_at, m.started_at, now(), m.last_error,
       coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                 FROM earlier a WHERE a.job_id = m.id), '[]'::jsonb),
       m.trace_context, m.created_by, m.tags, m.meta, m.progress
FROM moved m
RETURNING id
"""


def move_to_history(
    conn: psycopg.Connection[Any], schema: str, job_id: int, status: str, **columns: Any
) -> None:
    """Move unfinished job ``job_id`` of ``schema`` into the history as ``status``.

    ``columns`` are then set on its history row (``result``, ``attempt``,
    ``finalized_at``, ``lock_token``, ...). Raises AssertionError if the job
    was not in the hot table.
    """
    assert status in FINISHED, status
    quoted = sql.Identifier(schema).as_string(conn)
    moved = conn.execute(_MOVE.replace("{s}", quoted), {"id": job_id, "status": status})
    assert moved.fetchall() == [(job_id,)], f"job {job_id} is not unfinished"
    for column, value in columns.items():
        conn.execute(
            sql.SQL("UPDATE {}.job_history SET {} = %s WHERE id = %s").format(
                sql.Identifier(schema), sql.Identifier(column)
            ),
            [value, job_id],
        )


def finish_by_sql(
    conn: psycopg.Connection[Any], config: Config, job_id: int, status: str, **columns: Any
) -> None:
    """:func:`move_to_history` in ``config``'s schema."""
    move_to_history(conn, config.schema, job_id, status, **columns)
