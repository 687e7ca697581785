"""Sweeper: finalized jobs and stale definitions.

What it does, in bounded batches:

* jobs finalized more than ``finalized_job_threshold_ms`` ago are deleted, or
  with ``archive=True`` moved to ``job_archive`` with their attempt log as
  JSON; never while an unfinished job depends on them. Their attempt-log
  rows and dependency edges go with them;
* definitions not heartbeated for ``stale_definition_threshold_ms`` and with
  no job at all, finalized ones included, are deleted, so a definition removed
  from the code disappears once its last job is swept;
* with ``archive_retention_ms``, archived jobs finalized longer ago than that
  are deleted from ``job_archive`` (by default the archive is kept for ever).

Options: ``clean_interval_ms`` (default 300 000),
``finalized_job_threshold_ms`` (43 200 000), ``stale_definition_threshold_ms``
(3 600 000), ``archive`` (False), ``archive_retention_ms`` (None).
Events: OrchestratorFinalizedJobSwept, OrchestratorStaleDefinitionSwept.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import psycopg

from orchestra import events
from orchestra._config import Config
from orchestra._orchestrator._service import (
    BATCH_SIZE_DEFAULT,
    MAX_BATCHES_PER_PASS,
    Emission,
    RunResult,
    Service,
)


class Sweeper(Service):
    """Delete (or archive) old finalized jobs, then stale definitions."""

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
    ) -> None:
        super().__init__(config, interval_ms=interval_ms, batch_size=batch_size)
        self.finalized_job_threshold_ms = finalized_job_threshold_ms
        self.stale_definition_threshold_ms = stale_definition_threshold_ms
        self.archive = archive
        self.archive_retention_ms = archive_retention_ms

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Sweep finalized jobs, then stale definitions (which may only now have no jobs)."""
        swept = self._sweep_jobs(conn, now)
        stale = self._batches(
            conn,
            "definition_sweep_stale",
            {
                "now": now,
                "threshold_ms": self.stale_definition_threshold_ms,
            },
        )
        pruned: list[tuple[Any, ...]] = []
        if self.archive_retention_ms is not None:
            pruned = self._batches(
                conn,
                "job_archive_prune",
                {"now": now, "retention_ms": self.archive_retention_ms},
            )
        emissions = [
            Emission(
                events.OrchestratorFinalizedJobSwept,
                {
                    "job_id": job_id,
                    "definition": definition,
                    "archived": self.archive,
                },
            )
            for job_id, definition in swept
        ] + [
            Emission(events.OrchestratorStaleDefinitionSwept, {"definition": name})
            for (name,) in stale
        ]
        counts = {
            "jobs_swept": len(swept),
            "definitions_swept": len(stale),
            "archived_jobs_pruned": len(pruned),
        }
        return RunResult(self.name, counts, tuple(emissions))

    def _sweep_jobs(
        self, conn: psycopg.Connection[Any], now: dt.datetime | None
    ) -> list[tuple[Any, ...]]:
        """Old finalized jobs in batches: lock, then re-check and delete (two statements)."""
        params = {"now": now, "threshold_ms": self.finalized_job_threshold_ms}
        swept: list[tuple[Any, ...]] = []
        for _ in range(MAX_BATCHES_PER_PASS):
            with conn.transaction():
                locked = conn.execute(
                    self.config.queries["job_lock_sweepable"], {**params, "limit": self.batch_size}
                ).fetchall()
                if locked:
                    swept.extend(
                        conn.execute(
                            self.config.queries["job_sweep_finalized"],
                            {"ids": [row[0] for row in locked], "archive": self.archive},
                        ).fetchall()
                    )
            if len(locked) < self.batch_size:
                break
        return swept
