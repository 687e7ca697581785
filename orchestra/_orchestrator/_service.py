"""What every maintenance service shares.

A service is a small object with a ``run_once(conn, now)`` that does one
bounded pass and returns a :class:`RunResult`: counts, the events to emit (its
statements are committed by then: each runs in autocommit), and optionally how
soon it wants to run again. A service builds its events itself, typed, with
the origin its Orchestrator gave it. It never loops on its interval itself: the
Orchestrator's one loop does that, and runs leader-only services only while it
holds the lease. ``now`` is None in production (the database clock decides)
and a fixed time in tests, so that hour-long thresholds pass in milliseconds.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import psycopg

from orchestra._config import Config
from orchestra._event_origin import STANDALONE_ORCHESTRATOR, EventOrigin
from orchestra.events import Event

#: Rows per statement, and statements per pass: a pass is bounded even when
#: a backlog is huge; the next pass continues.
BATCH_SIZE_DEFAULT = 1_000
MAX_BATCHES_PER_PASS = 50


@attrs.frozen
class RunResult:
    """What one pass did.

    Attributes:
        service: the service's name.
        counts: what was done, by kind (``rescued``, ``swept`` ...).
        events: the events to emit, in order.
        next_run_in_s: run again this soon (None: at the service's interval).
    """

    service: str
    counts: Mapping[str, int] = attrs.field(factory=dict)
    events: tuple[Event, ...] = ()
    next_run_in_s: float | None = None


class Service(abc.ABC):
    """A maintenance service: a name, an interval, and ``run_once``."""

    name: ClassVar[str]
    #: Only the leader runs it (everything but the definition heartbeat).
    leader_only: ClassVar[bool] = True

    def __init__(
        self,
        config: Config,
        *,
        interval_ms: int,
        batch_size: int = BATCH_SIZE_DEFAULT,
        origin: EventOrigin = STANDALONE_ORCHESTRATOR,
    ) -> None:
        self.config = config
        self.interval_ms = interval_ms
        self.batch_size = batch_size
        #: Whose events these are: the Orchestrator running the service.
        self.origin = origin

    @abc.abstractmethod
    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Do one bounded pass of work."""

    def _batches(
        self, conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Run a batch query until it returns a short batch (or the pass limit); all rows."""
        rows: list[tuple[Any, ...]] = []
        for _ in range(MAX_BATCHES_PER_PASS):
            batch = conn.execute(
                self.config.queries[query], {**params, "limit": self.batch_size}
            ).fetchall()
            rows.extend(batch)
            if len(batch) < self.batch_size:
                break
        return rows

    def _notify_finished(self, conn: psycopg.Connection[Any], job_ids: list[int]) -> None:
        """Tell result waiters (JobHandle.result) that these jobs were finalized.

        Sent after the finalizing statements committed (autocommit), in
        payloads that fit a notification.
        """
        for chunk in _id_lists(job_ids):
            conn.execute(
                self.config.queries["job_notify_finished"],
                {"finished_channel": self.config.finished_channel, "ids": chunk},
            )


def _id_lists(job_ids: list[int], max_chars: int = 7_900) -> list[str]:
    """Comma-separated id lists, each shorter than ``max_chars``."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for job_id in job_ids:
        text = str(job_id)
        if current and size + len(text) + 1 > max_chars:
            chunks.append(",".join(current))
            current, size = [], 0
        current.append(text)
        size += len(text) + 1
    if current:
        chunks.append(",".join(current))
    return chunks
