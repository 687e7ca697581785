"""Finalizer: timeouts and dependencies.

What it does, in this order (so that a job with several reasons gets the first
one only: timeout > unmet dependencies):

* unfinished jobs not finished within ``timeout_interval_ms`` of their
  ``run_at`` are finalized as failed (reason ``timeout``);
* waiting jobs that depend on a failed or cancelled job, or on a job that is
  no longer anywhere (deleted by the history's retention), are finalized as
  failed (reason ``unmet_dependencies``), repeated until the whole chain is
  done, in the same pass;
* waiting jobs whose dependencies all succeeded are made available: the
  catch-up for the release that a dependency's own finish normally does.

A finalized job leaves the hot table: the statement that fails it deletes
its row and inserts it into ``job_history``, with its attempt log. Finalizing
is exclusive and idempotent: rows are locked, and a job no longer in the hot
table is never found again.

Options: ``finalize_interval_ms`` (default 5 000).
Events: OrchestratorJobFinalized, OrchestratorJobReleased.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import psycopg

from orchestra import events
from orchestra._orchestrator._service import MAX_BATCHES_PER_PASS, RunResult, Service


class Finalizer(Service):
    """Fail timed-out jobs and dependents of failed jobs; release satisfied dependents."""

    name: ClassVar[str] = "finalizer"

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """One pass: timeouts, then the unmet-dependency cascade, then catch-up releases."""
        finalized: list[events.OrchestratorJobFinalized] = []
        timed_out = self._batches(conn, "job_finalize_timed_out", {"now": now})
        finalized += [self._finalized(row, "timeout") for row in timed_out]
        unmet = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            # Each statement finalizes one more level of a chain: repeat until
            # nothing is left, even when a level is smaller than a batch.
            rows = conn.execute(
                self.config.queries["job_finalize_unmet_dependencies"],
                {"now": now, "limit": self.batch_size},
            ).fetchall()
            if not rows:
                break
            unmet += len(rows)
            finalized += [self._finalized(row, "unmet_dependencies") for row in rows]
        self._notify_finished(conn, [e.job_id for e in finalized])
        released = self._batches(
            conn, "job_release_satisfied", {"notify_channel": self.config.notify_channel}
        )
        emitted: list[events.Event] = [*finalized]
        emitted += [
            events.OrchestratorJobReleased(
                **self.origin.header(),
                job_id=job_id,
                definition=definition,
                attempt=0,
                reason="dependencies_met",
            )
            for job_id, definition, _ in released
        ]
        counts = {
            "timed_out": len(timed_out),
            "unmet_dependencies": unmet,
            "released": len(released),
        }
        return RunResult(self.name, counts, tuple(emitted))

    def _finalized(self, row: tuple[Any, ...], reason: str) -> events.OrchestratorJobFinalized:
        job_id, definition, attempt = row
        return events.OrchestratorJobFinalized(
            **self.origin.header(),
            job_id=job_id,
            definition=definition,
            attempt=attempt,
            reason=reason,
        )
