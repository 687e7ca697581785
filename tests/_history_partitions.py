"""The history's partitions in the maintenance tests: finished jobs, ids far ahead.

``job_history`` is partitioned by ranges of 1,000,000 job ids; retention and
the making of partitions depend on which ids were given out, so the tests
move the id sequence ahead instead of creating millions of jobs, and finish
jobs at a chosen time by moving them into the history directly, as a
finishing statement does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from orchestra import Config
from tests._finished_jobs import finish_by_sql


def finish_at(
    db: psycopg.Connection[Any],
    config: Config,
    job_id: int,
    status: str = "succeeded",
    finalized_at: dt.datetime | None = None,
) -> None:
    """Finish ``job_id`` as ``status`` at ``finalized_at`` (default: now), without a worker."""
    if finalized_at is None:
        finish_by_sql(db, config, job_id, status)
    else:
        finish_by_sql(db, config, job_id, status, finalized_at=finalized_at)


def skip_ids_to(db: psycopg.Connection[Any], config: Config, last_id: int) -> None:
    """Make the next job id ``last_id + 1``."""
    db.execute("SELECT setval(%s, %s)", [f'"{config.schema}".job_id_seq', last_id])


def history_partitions(db: psycopg.Connection[Any], config: Config) -> list[str]:
    """The names of the history's partitions, the default one included, sorted."""
    rows = db.execute(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1",
        [f'"{config.schema}".job_history'],
    ).fetchall()
    return [str(r[0]) for r in rows]


def partition_of(db: psycopg.Connection[Any], config: Config, job_id: int) -> str | None:
    """The partition that holds the finished job ``job_id`` (None: not in the history)."""
    row = db.execute(
        "SELECT c.relname::text FROM pg_class c "
        f'WHERE c.oid = (SELECT tableoid FROM "{config.schema}".job_history WHERE id = %s)',
        [job_id],
    ).fetchone()
    return None if row is None else str(row[0])
