"""Migration 0007 on a queue whose ids span a wide range.

The migration makes history partitions before it moves the finished jobs in.
Each partition costs about a dozen locks held until the migration commits
(the table, its TOAST table and indexes, the ATTACH), and the server's lock
table is shared by every session (max_locks_per_transaction x
max_connections: 6,400 with the defaults). One unfinished job deferred long
ago, or an archive kept for ever, must not make the migration create a
partition for every million ids given out since.
"""

from __future__ import annotations

from typing import Any

import psycopg

from orchestra import _migrate

BEFORE_HOT_TABLE = 6


def test_migration_makes_partitions_only_for_ranges_that_hold_jobs(
    schema: str, db: psycopg.Connection[Any]
) -> None:
    """A delayed job of id 1 and a queue now at id 50,000,000: a handful of partitions, not 53."""
    _migrate.migrate(db, schema, up_to=BEFORE_HOT_TABLE)
    s = f'"{schema}"'
    db.execute(
        f"INSERT INTO {s}.job_definition (name, channel, num_attempts, backoff, backoff_base_ms,"
        " backoff_max_ms, priority, lock_interval_ms, timeout_interval_ms)"
        " VALUES ('job', '_default', 1, 'none', 0, 0, 0, 60000, 0)"
    )
    # Deferred long ago, due in a month: unfinished, it stays in the hot table.
    db.execute(
        f"INSERT INTO {s}.job (definition, channel, payload, max_attempts, run_at)"
        " VALUES ('job', '_default', '{}', 1, now() + interval '30 days')"
    )
    db.execute("SELECT setval(%s, 50000000)", [f"{schema}.job_id_seq"])
    db.execute(
        f"INSERT INTO {s}.job (definition, channel, status, payload, attempt, max_attempts,"
        " started_at, finalized_at)"
        " VALUES ('job', '_default', 'succeeded', '{}', 1, 1, now(), now())"
    )
    _migrate.migrate(db, schema)
    partitions = db.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass",
        [f"{s}.job_history"],
    ).fetchone()
    # The finished job's range, the ranges ahead of the sequence, the default.
    assert partitions is not None and partitions[0] <= 4, partitions
