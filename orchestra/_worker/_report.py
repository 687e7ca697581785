"""What a worker tells the world about its jobs: counters, and one event per claim and finish."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from orchestra import events
from orchestra._event_origin import EventOrigin
from orchestra._worker._attempts import Claimed, Finish

logger = logging.getLogger("orchestra.worker")


@attrs.define
class WorkerStats:
    """Counters since the worker started (read them from any thread)."""

    claim_queries: int = 0
    #: Heartbeat statements (worker row and leases; definitions every minute).
    heartbeat_queries: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    fenced: int = 0
    #: Attempts whose function snoozed (the job runs again later, no attempt spent).
    snoozed: int = 0
    #: Attempts stopped because their job was cancelled while they ran.
    cancelled: int = 0
    max_running: int = 0


class JobReporter:
    """Counts claims and finishes and emits their events.

    Args:
        origin: the worker.
        emit: hands an event to the worker's handlers.
        wants_events: whether any handler is attached; per-job events are
            built only then (mypy checks their construction all the same).
        stats: the counters to update.
    """

    def __init__(
        self,
        origin: EventOrigin,
        emit: Callable[[events.Event], None],
        *,
        wants_events: bool,
        stats: WorkerStats,
    ) -> None:
        self._origin = origin
        self._emit = emit
        self._wants_events = wants_events
        self._stats = stats

    def claimed(self, job: Claimed, *, in_flight: int) -> None:
        """A job was claimed (its attempt counter was incremented); ``in_flight`` are held now."""
        self._stats.claimed += 1
        self._stats.max_running = max(self._stats.max_running, in_flight)
        if self._wants_events:
            queue_wait_s = (job.started_at - job.run_at).total_seconds()
            self._emit(
                events.WorkerJobClaimed(
                    **self._origin.header(),
                    job_id=job.id,
                    definition=job.definition,
                    attempt=job.attempt,
                    max_attempts=job.max_attempts,
                    queue_wait_ms=max(0, round(queue_wait_s * 1000)),
                    queue_wait_s=max(0.0, queue_wait_s),
                    trace_context=job.trace_context,
                    tags=job.tags,
                )
            )

    def committed(self, finish: Finish) -> None:
        """A finish was committed, or refused (fenced), or dropped."""
        if finish.dropped:
            return  # logged when dropped; the lease will expire and the job be rescued
        stats = self._stats
        if finish.committed_status is None:
            stats.fenced += 1
            logger.warning(
                "job %d attempt %d: finish refused, the job was rescued or finalized meanwhile",
                finish.job_id,
                finish.attempt,
            )
            if self._wants_events:
                self._emit(
                    events.WorkerJobFenced(
                        **self._origin.header(),
                        job_id=finish.job_id,
                        definition=finish.definition,
                        attempt=finish.attempt,
                        outcome=finish.outcome,
                    )
                )
        elif finish.outcome == "succeeded":
            stats.succeeded += 1
            if self._wants_events:
                self._emit(
                    events.WorkerJobSucceeded(
                        **self._origin.header(),
                        job_id=finish.job_id,
                        definition=finish.definition,
                        attempt=finish.attempt,
                        duration_ms=finish.duration_ms,
                        duration_s=finish.duration_s,
                    )
                )
        elif finish.outcome == "snoozed":
            stats.snoozed += 1
            assert finish.committed_run_at is not None
            if self._wants_events:
                self._emit(
                    events.WorkerJobSnoozed(
                        **self._origin.header(),
                        job_id=finish.job_id,
                        definition=finish.definition,
                        attempt=finish.attempt,
                        seconds=finish.retry_delay_ms / 1000,
                        run_at=finish.committed_run_at,
                        duration_ms=finish.duration_ms,
                        duration_s=finish.duration_s,
                    )
                )
        elif finish.outcome == "cancelled":
            stats.cancelled += 1
            if self._wants_events:
                self._emit(
                    events.WorkerJobCancelled(
                        **self._origin.header(),
                        job_id=finish.job_id,
                        definition=finish.definition,
                        attempt=finish.attempt,
                        duration_ms=finish.duration_ms,
                        duration_s=finish.duration_s,
                    )
                )
        elif finish.outcome == "released":
            stats.released += 1
            assert finish.committed_run_at is not None
            if self._wants_events:
                self._emit(
                    events.WorkerJobReleased(
                        **self._origin.header(),
                        job_id=finish.job_id,
                        definition=finish.definition,
                        attempt=finish.attempt,
                        reason="unknown_definition",
                        retry_at=finish.committed_run_at,
                    )
                )
        else:
            stats.failed += 1
            if self._wants_events:
                self._emit(self._failed_event(finish))

    def _failed_event(self, finish: Finish) -> events.WorkerJobFailed:
        will_retry = finish.committed_status == "available"
        event_type = (
            events.WorkerJobPayloadInvalid if finish.payload_invalid else events.WorkerJobFailed
        )
        return event_type(
            **self._origin.header(),
            job_id=finish.job_id,
            definition=finish.definition,
            attempt=finish.attempt,
            max_attempts=finish.max_attempts,
            error=finish.error or "",
            will_retry=will_retry,
            retry_at=finish.committed_run_at if will_retry else None,
            duration_ms=finish.duration_ms,
            duration_s=finish.duration_s,
            traceback=finish.traceback,
        )
