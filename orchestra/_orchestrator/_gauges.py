"""Queue gauges: a snapshot of the queue for metrics (leader only).

What it does: counts the unfinished jobs per status (``waiting``,
``available``, ``running``) and channel, and the live daemons per role (a
heartbeat newer than ``worker_stale_threshold_ms``), in one read-only
statement (``metrics_gauges`` in ``orchestra/sql/metrics.sql``, which says
what it costs), and emits them as one event. It changes nothing.

Options: ``gauges_interval_ms`` (default 15 000).
Events: one OrchestratorQueueGauges per pass.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import psycopg

from orchestra import events
from orchestra._config import Config
from orchestra._orchestrator._service import Emission, RunResult, Service


class QueueGauges(Service):
    """Count unfinished jobs by status and channel, and live daemons by role."""

    name: ClassVar[str] = "gauges"

    def __init__(self, config: Config, *, interval_ms: int, worker_stale_threshold_ms: int) -> None:
        super().__init__(config, interval_ms=interval_ms)
        self.worker_stale_threshold_ms = worker_stale_threshold_ms

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Read the snapshot and emit it; counts are left empty (nothing was changed)."""
        rows = conn.execute(
            self.config.queries["metrics_gauges"],
            {"now": now, "threshold_ms": self.worker_stale_threshold_ms},
        ).fetchall()
        depth = tuple(
            (str(label), str(channel), int(n))
            for kind, label, channel, n in rows
            if kind == "depth"
        )
        workers = {str(label): int(n) for kind, label, _, n in rows if kind == "workers"}
        return RunResult(
            self.name,
            emissions=(
                Emission(events.OrchestratorQueueGauges, {"depth": depth, "workers": workers}),
            ),
        )
