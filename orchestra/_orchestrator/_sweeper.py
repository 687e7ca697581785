"""Sweeper: the retention of finished jobs, leftovers, and stale definitions.

Finished jobs live in ``job_history``, partitioned by ranges of 1,000,000 job
ids, plus a default partition for ids beyond the ranges made so far. What a
pass does:

* makes the partitions of the ids about to be given out (up to 2,000,000
  beyond the highest id), moving in any rows the default partition took;
* retention: finished jobs are kept ``finalized_job_threshold_ms``, or with
  ``archive=True`` ``archive_retention_ms`` (None: for ever). A partition
  whose every job finished before that is dropped whole, with the dependency
  edges of its jobs (one OrchestratorHistoryPruned each); rows of the default
  partition past it are deleted in batches (one OrchestratorFinalizedJobSwept
  each);
* deletes, in batches, attempt-log rows and dependency edges whose job is in
  neither ``job`` nor ``job_history`` (a job deleted while unfinished). The
  edges are walked a bounded slice per statement, from where the previous
  pass stopped, so a large table costs the same each pass;
* deletes definitions not heartbeated for ``stale_definition_threshold_ms``
  and without any job, finished ones included, so a definition removed from
  the code disappears once its last job leaves the history.

A finished job required by a waiting job is not kept past the retention: the
dependent then has a dependency in neither table, and the finalizer fails it
(unmet dependencies).

Dropping a partition, and attaching one, lock ``job_history`` (or its default
partition) exclusively until commit: each runs in a transaction of its own
with a ``lock_timeout``, so that finishes never queue behind a drop that
itself waits for a long reader of the history. A drop or a preparation that
times out is retried at the next pass.

Options: ``clean_interval_ms`` (default 300 000),
``finalized_job_threshold_ms`` (43 200 000), ``stale_definition_threshold_ms``
(3 600 000), ``archive`` (False), ``archive_retention_ms`` (None).
Events: OrchestratorHistoryPruned, OrchestratorFinalizedJobSwept,
OrchestratorStaleDefinitionSwept.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, ClassVar

import psycopg
from psycopg import errors

from orchestra import events
from orchestra._config import Config
from orchestra._event_origin import STANDALONE_ORCHESTRATOR, EventOrigin
from orchestra._orchestrator._service import (
    BATCH_SIZE_DEFAULT,
    MAX_BATCHES_PER_PASS,
    RunResult,
    Service,
)

logger = logging.getLogger("orchestra.orchestrator")

#: How long a partition drop or attach may wait for its lock on the history.
#: Finishing statements queue behind a waiting drop, so this bounds their
#: stall; a drop that cannot get the lock in time is retried next pass.
HISTORY_LOCK_TIMEOUT_MS = 1_000


class Sweeper(Service):
    """Keep the history within its retention; delete leftovers and stale definitions."""

    name: ClassVar[str] = "sweeper"

    def __init__(
        self,
        config: Config,
        *,
        interval_ms: int,
        finalized_job_threshold_ms: int,
        stale_definition_threshold_ms: int,
        archive: bool,
        archive_retention_ms: int | None = None,
        batch_size: int = BATCH_SIZE_DEFAULT,
        origin: EventOrigin = STANDALONE_ORCHESTRATOR,
    ) -> None:
        super().__init__(config, interval_ms=interval_ms, batch_size=batch_size, origin=origin)
        self.finalized_job_threshold_ms = finalized_job_threshold_ms
        self.stale_definition_threshold_ms = stale_definition_threshold_ms
        self.archive = archive
        self.archive_retention_ms = archive_retention_ms
        # Where the walk through job_dependency goes on (its primary key).
        self._edge_cursor: tuple[int, int] = (0, 0)

    @property
    def retention_ms(self) -> int | None:
        """How long finished jobs are kept in the history (None: for ever)."""
        return self.archive_retention_ms if self.archive else self.finalized_job_threshold_ms

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Prepare partitions, apply the retention, delete leftovers, then stale definitions."""
        counts = {
            "history_partitions_prepared": 0,
            "history_partitions_dropped": 0,
            "history_jobs_dropped": 0,
            "jobs_swept": 0,
            "orphan_attempts_deleted": 0,
            "orphan_dependencies_deleted": 0,
            "definitions_swept": 0,
            "history_lock_timeouts": 0,
        }
        emitted: list[events.Event] = []
        prepared = self._with_lock_timeout(conn, "job_history_prepare", {})
        if prepared is None:
            counts["history_lock_timeouts"] += 1
        else:
            counts["history_partitions_prepared"] = int(prepared[0][0])
        retention_ms = self.retention_ms
        if retention_ms is not None:
            params = {"now": now, "retention_ms": retention_ms}
            for partition, jobs, cutoff in self._drop_partitions(conn, params, counts):
                counts["history_partitions_dropped"] += 1
                counts["history_jobs_dropped"] += int(jobs)
                emitted.append(
                    events.OrchestratorHistoryPruned(
                        **self.origin.header(), partition=partition, jobs=int(jobs), cutoff=cutoff
                    )
                )
            swept = self._batches(conn, "job_history_default_prune", params)
            counts["jobs_swept"] = len(swept)
            emitted += [
                events.OrchestratorFinalizedJobSwept(
                    **self.origin.header(),
                    job_id=job_id,
                    definition=definition,
                    archived=self.archive,
                )
                for job_id, definition in swept
            ]
        counts["orphan_attempts_deleted"] = len(
            self._batches(conn, "job_attempt_prune_orphans", {})
        )
        counts["orphan_dependencies_deleted"] = self._prune_orphan_edges(conn)
        stale = self._batches(
            conn,
            "definition_sweep_stale",
            {"now": now, "threshold_ms": self.stale_definition_threshold_ms},
        )
        counts["definitions_swept"] = len(stale)
        emitted += [
            events.OrchestratorStaleDefinitionSwept(**self.origin.header(), definition=name)
            for (name,) in stale
        ]
        return RunResult(self.name, counts, tuple(emitted))

    def _drop_partitions(
        self, conn: psycopg.Connection[Any], params: dict[str, Any], counts: dict[str, int]
    ) -> list[tuple[Any, ...]]:
        """Drop expired partitions, oldest first, one per transaction."""
        dropped: list[tuple[Any, ...]] = []
        for _ in range(MAX_BATCHES_PER_PASS):
            rows = self._with_lock_timeout(conn, "job_history_drop_before", {**params, "limit": 1})
            if rows is None:
                counts["history_lock_timeouts"] += 1
                break
            if not rows:
                break
            dropped.extend(rows)
        return dropped

    def _with_lock_timeout(
        self, conn: psycopg.Connection[Any], query: str, params: dict[str, Any]
    ) -> list[tuple[Any, ...]] | None:
        """Run ``query`` in a transaction with HISTORY_LOCK_TIMEOUT_MS; None if it timed out."""
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", [f"{HISTORY_LOCK_TIMEOUT_MS}ms"]
                )
                return conn.execute(self.config.queries[query], params).fetchall()
        except errors.LockNotAvailable:
            logger.warning(
                "sweeper: %s waited %d ms for its lock on job_history (a long query on the"
                " history holds it); retried next pass",
                query,
                HISTORY_LOCK_TIMEOUT_MS,
            )
            return None

    def _prune_orphan_edges(self, conn: psycopg.Connection[Any]) -> int:
        """Walk job_dependency a slice per statement from the cursor; edges deleted."""
        deleted = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            after_job_id, after_required_job_id = self._edge_cursor
            row = conn.execute(
                self.config.queries["job_dependency_prune_orphans"],
                {
                    "after_job_id": after_job_id,
                    "after_required_job_id": after_required_job_id,
                    "limit": self.batch_size,
                },
            ).fetchone()
            assert row is not None  # an aggregate row, always
            examined, last_job_id, last_required_job_id, removed = row
            deleted += int(removed)
            if examined < self.batch_size:
                self._edge_cursor = (0, 0)  # the end: the next pass starts over
                break
            self._edge_cursor = (int(last_job_id), int(last_required_job_id))
        return deleted
