"""Rescue: running jobs whose worker is gone go back to work.

What it does, in bounded batches:

* jobs of workers whose heartbeat is older than ``worker_stale_threshold_ms``
  are taken back at once, and those worker rows deleted;
* jobs whose lease (``locked_until``) expired are taken back, whichever worker
  held them: a worker extends its leases while it lives, so an expired lease
  means it died, hung, or lost its connection.

A taken-back job is ``available`` again when attempts remain, else finalized
as failed (no_attempts_remaining) and moved to ``job_history``. The lost
attempt counts and is logged as ``lost`` (in ``job_attempt``, or as the last
entry of the history row's attempt log). Each UPDATE or DELETE re-checks
status and lock token under the row lock, so
an attempt that finished meanwhile is never overwritten, and the late finish
of a rescued attempt is refused by the worker's fence.

Options: ``rescue_interval_ms`` (default 5 000), ``worker_stale_threshold_ms``
(default 60 000).
Events: OrchestratorJobRescued, OrchestratorJobFinalized (no_attempts_remaining),
OrchestratorWorkerLost.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import psycopg

from orchestra import events
from orchestra._config import Config
from orchestra._event_origin import STANDALONE_ORCHESTRATOR, EventOrigin
from orchestra._orchestrator._service import BATCH_SIZE_DEFAULT, RunResult, Service


class Rescuer(Service):
    """Take back the jobs of dead workers and expired leases."""

    name: ClassVar[str] = "rescuer"

    def __init__(
        self,
        config: Config,
        *,
        interval_ms: int,
        worker_stale_threshold_ms: int,
        batch_size: int = BATCH_SIZE_DEFAULT,
        origin: EventOrigin = STANDALONE_ORCHESTRATOR,
    ) -> None:
        super().__init__(config, interval_ms=interval_ms, batch_size=batch_size, origin=origin)
        self.worker_stale_threshold_ms = worker_stale_threshold_ms

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Rescue the jobs of stale workers, then those of expired leases."""
        emitted: list[events.Event] = []
        counts = {"rescued": 0, "failed": 0, "workers_lost": 0}
        params = {"now": now, "notify_channel": self.config.notify_channel}
        stale = self._batches(
            conn,
            "job_rescue_stale_workers",
            {**params, "threshold_ms": self.worker_stale_threshold_ms},
        )
        for kind, job_id, definition, attempt, status, locked_by, _ in stale:
            if kind == "worker":
                counts["workers_lost"] += 1
                emitted.append(
                    events.OrchestratorWorkerLost(**self.origin.header(), worker_id=job_id)
                )
            else:
                emitted.append(
                    self._taken_back(job_id, definition, attempt, status, locked_by, "worker_lost")
                )
                counts["rescued" if status == "available" else "failed"] += 1
        for job_id, definition, attempt, status, locked_by, _ in self._batches(
            conn, "job_rescue_expired", params
        ):
            emitted.append(
                self._taken_back(job_id, definition, attempt, status, locked_by, "lease_expired")
            )
            counts["rescued" if status == "available" else "failed"] += 1
        self._notify_finished(
            conn, [e.job_id for e in emitted if isinstance(e, events.OrchestratorJobFinalized)]
        )
        return RunResult(self.name, counts, tuple(emitted))

    def _taken_back(
        self,
        job_id: int,
        definition: str,
        attempt: int,
        status: str,
        locked_by: int | None,
        reason: str,
    ) -> events.OrchestratorJobRescued | events.OrchestratorJobFinalized:
        if status == "available":
            return events.OrchestratorJobRescued(
                **self.origin.header(),
                job_id=job_id,
                definition=definition,
                attempt=attempt,
                reason=reason,
                locked_by=locked_by,
            )
        return events.OrchestratorJobFinalized(
            **self.origin.header(),
            job_id=job_id,
            definition=definition,
            attempt=attempt,
            reason="no_attempts_remaining",
        )
