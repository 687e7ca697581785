"""Typed events: every state change a daemon makes, handed to your handlers.

An event handler is any callable ``(Event) -> None``; pass one or several as
``event_handler=`` to a daemon. Events are frozen attrs classes, one class per
kind, every field always present. They are emitted only *after* the state
change they report has been committed. A handler that raises is logged (logger
``orchestra.events``) and never stops the daemon or rolls anything back.
Handlers run on the daemon's event loop thread: keep them quick, or hand the
work to a queue of your own.

================================  ==============================================================
event                             when
================================  ==============================================================
DaemonStarted                     a daemon registered itself and is about to work
DaemonStopRequested               stop() was called or SIGTERM/SIGINT arrived
DaemonStopped                     the daemon's loop has exited (``error`` set if it crashed)
DaemonDatabaseError               a database operation failed; the daemon retries after a pause
WorkerListenLost                  the LISTEN connection dropped; the worker polls meanwhile
WorkerListenRestored              LISTEN is back, followed by a catch-up poll
WorkerJobClaimed                  a job was claimed (its attempt counter was incremented)
WorkerJobSucceeded                the job function returned; the job is finalized as succeeded
WorkerJobFailed                   the attempt failed; ``will_retry`` tells what happens next
WorkerJobPayloadInvalid           (a WorkerJobFailed) the stored payload did not fit its type
WorkerJobReleased                 a claimed job was handed back unrun, its attempt refunded
WorkerJobSnoozed                  the job function snoozed: the job runs again later, its
                                  attempt refunded
WorkerJobCancelled                the job was cancelled while it ran here: its attempt was stopped
WorkerJobFenced                   a finish was refused: the attempt no longer owns the job
OrchestratorLeadershipAcquired    this orchestrator now holds the leader lease
OrchestratorLeadershipLost        it no longer does (stopped, expired, database error)
OrchestratorServiceFailed         a maintenance pass raised; it is retried at its next interval
OrchestratorDefinitionHeartbeat   a definition carried by this process was heartbeated
OrchestratorJobScheduled          a repeat or cron tick enqueued its job
OrchestratorTickSkipped           a tick was skipped: the previous tick's job is unfinished,
                                  or the definition is paused
OrchestratorJobRescued            a running job of a dead worker (or expired lease) is available
                                  again
OrchestratorWorkerLost            a worker row whose heartbeat went stale was removed
OrchestratorJobReleased           a waiting job's dependencies all succeeded (catch-up)
OrchestratorJobFinalized          failed by the orchestrator: timeout, no_attempts_remaining,
                                  unmet_dependencies
OrchestratorHistoryPruned         a partition of the history, every job of it past the
                                  retention, was dropped
OrchestratorFinalizedJobSwept     a finished job past the retention was deleted from the
                                  history's default partition
OrchestratorStaleDefinitionSwept  a definition nobody carries any more, without jobs, was
                                  deleted
OrchestratorQueueGauges           unfinished jobs per status and channel, live daemons per role,
                                  the oldest transaction and the job table's dead rows (the
                                  leader, every ``gauges_interval_ms``)
================================  ==============================================================
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

from orchestra.errors import ConfigurationError

__all__ = [
    "DaemonDatabaseError",
    "DaemonStarted",
    "DaemonStopRequested",
    "DaemonStopped",
    "Event",
    "EventHandler",
    "OrchestratorDefinitionHeartbeat",
    "OrchestratorFinalizedJobSwept",
    "OrchestratorHistoryPruned",
    "OrchestratorJobFinalized",
    "OrchestratorJobReleased",
    "OrchestratorJobRescued",
    "OrchestratorJobScheduled",
    "OrchestratorLeadershipAcquired",
    "OrchestratorLeadershipLost",
    "OrchestratorQueueGauges",
    "OrchestratorServiceFailed",
    "OrchestratorStaleDefinitionSwept",
    "OrchestratorTickSkipped",
    "OrchestratorWorkerLost",
    "Role",
    "WorkerJobCancelled",
    "WorkerJobClaimed",
    "WorkerJobFailed",
    "WorkerJobFenced",
    "WorkerJobPayloadInvalid",
    "WorkerJobReleased",
    "WorkerJobSnoozed",
    "WorkerJobSucceeded",
    "WorkerListenLost",
    "WorkerListenRestored",
]

Role = Literal["worker", "orchestrator", "maintenance"]

logger = logging.getLogger("orchestra.events")


@attrs.frozen(kw_only=True)
class Event:
    """Fields every event has.

    Attributes:
        timestamp: when the event was emitted (aware, UTC).
        daemon_id: unique per daemon within its process.
        daemon_name: ``<name>-<role>``.
        role: the kind of daemon that emitted it.
    """

    timestamp: dt.datetime
    daemon_id: int
    daemon_name: str
    role: Role


@attrs.frozen(kw_only=True)
class DaemonStarted(Event):
    """The daemon is registered and about to work."""

    host: str
    pid: int


@attrs.frozen(kw_only=True)
class DaemonStopRequested(Event):
    """The daemon was asked to stop: no new work is taken from now on.

    Attributes:
        reason: ``stop()``, or the name of the signal.
        in_flight: how many jobs were running when the stop was requested.
    """

    reason: str
    in_flight: int


@attrs.frozen(kw_only=True)
class DaemonStopped(Event):
    """The daemon's loop has exited.

    Attributes:
        error: why the daemon crashed, or None after a clean stop.
        handed_back: jobs that did not finish within the grace period.
    """

    error: str | None
    handed_back: int


@attrs.frozen(kw_only=True)
class DaemonDatabaseError(Event):
    """A database operation failed; the daemon keeps going and retries.

    Attributes:
        operation: what the daemon was doing: a worker's ``claim``, ``finish``,
            ``heartbeat`` ...; an orchestrator's ``election`` or the name of the
            maintenance pass (``scheduler``, ``rescuer`` ...).
        error: the error, with any password redacted.
        retry_in_ms: how long the daemon waits before trying again.
    """

    operation: str
    error: str
    retry_in_ms: int


@attrs.frozen(kw_only=True)
class WorkerListenLost(Event):
    """The LISTEN connection was lost; wake-ups rely on polling until it is back."""

    error: str


@attrs.frozen(kw_only=True)
class WorkerListenRestored(Event):
    """LISTEN is re-established; a catch-up poll follows at once."""


@attrs.frozen(kw_only=True)
class _JobEvent(Event):
    job_id: int
    definition: str
    attempt: int


@attrs.frozen(kw_only=True)
class WorkerJobClaimed(_JobEvent):
    """A job was claimed by this worker.

    Attributes:
        max_attempts: the job's attempt budget.
        queue_wait_ms: claim time minus the time the job became runnable.
        queue_wait_s: the same in seconds, to the microsecond (None: not measured
            finer than ``queue_wait_ms``).
        trace_context: the OpenTelemetry context of the span that deferred the
            job, as stored with it (the propagator's carrier as JSON text, e.g.
            ``{"traceparent":"00-...-01"}``), or None when the producer had no
            span or no opentelemetry. :class:`orchestra.otel.OpenTelemetryHandler`
            uses it.
        tags: the tags the job was deferred with (``defer(tags=...)``); its
            ``meta`` and progress are not carried by events (read them with
            ``config.jobs.get``).
    """

    max_attempts: int
    queue_wait_ms: int
    trace_context: str | None = None
    queue_wait_s: float | None = None
    tags: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class WorkerJobSucceeded(_JobEvent):
    """The job function returned and the job is finalized as succeeded.

    Attributes:
        duration_ms: how long the job function ran.
        duration_s: the same in seconds, to the microsecond (None: not measured
            finer than ``duration_ms``).
    """

    duration_ms: int
    duration_s: float | None = None


@attrs.frozen(kw_only=True)
class WorkerJobFailed(_JobEvent):
    """An attempt failed.

    Attributes:
        max_attempts: the job's attempt budget.
        error: ``ExceptionType: message``.
        will_retry: True if the job went back to ``available``; False if it is now ``failed``.
        retry_at: when the next attempt may start (None when not retrying).
        duration_ms: how long the attempt ran.
        duration_s: the same in seconds, to the microsecond (None: not measured
            finer than ``duration_ms``).
        traceback: the formatted traceback of the job's exception (bounded as
            stored), or None (a timeout, an interruption, an unreadable payload).
    """

    max_attempts: int
    error: str
    will_retry: bool
    retry_at: dt.datetime | None
    duration_ms: int
    duration_s: float | None = None
    traceback: str | None = None


@attrs.frozen(kw_only=True)
class WorkerJobPayloadInvalid(WorkerJobFailed):
    """The stored payload no longer structures into the definition's payload type.

    The attempt counts as failed; the job function was not called.
    """


@attrs.frozen(kw_only=True)
class WorkerJobReleased(_JobEvent):
    """A claimed job was handed back without running; its attempt was refunded.

    Attributes:
        reason: ``unknown_definition`` (this worker does not carry the definition).
        retry_at: when the job becomes claimable again.
    """

    reason: str
    retry_at: dt.datetime


@attrs.frozen(kw_only=True)
class WorkerJobSnoozed(_JobEvent):
    """The job function snoozed (``Snooze``): the job is available again, due at
    ``run_at``, and this run spent no attempt (``attempt`` is the number the next
    run has too).

    Attributes:
        seconds: how long it snoozed for.
        run_at: when it is due again.
        duration_ms: how long the function ran before it snoozed.
        duration_s: the same in seconds, to the microsecond.
    """

    seconds: float
    run_at: dt.datetime
    duration_ms: int
    duration_s: float | None = None


@attrs.frozen(kw_only=True)
class WorkerJobCancelled(_JobEvent):
    """The job was cancelled (``config.jobs.cancel``) while this attempt ran, and
    the worker stopped the attempt: an ``async def`` function's task was
    cancelled, a child process terminated, or a ``def`` function returned
    after ``ctx.should_stop`` turned true. The job is ``cancelled``; it is not
    retried. Its slot is free again.

    Attributes:
        duration_ms: how long the attempt ran, until it stopped.
        duration_s: the same in seconds, to the microsecond.
    """

    duration_ms: int
    duration_s: float | None = None


@attrs.frozen(kw_only=True)
class WorkerJobFenced(_JobEvent):
    """The finish of an attempt was refused: the job was rescued or finalized meanwhile.

    Attributes:
        outcome: what the worker tried to record (``succeeded``, ``failed`` ...).
    """

    outcome: str


@attrs.frozen(kw_only=True)
class OrchestratorLeadershipAcquired(Event):
    """This orchestrator holds the leader lease and runs the maintenance services.

    Attributes:
        lease_ms: how long the lease lasts without renewal.
    """

    lease_ms: int


@attrs.frozen(kw_only=True)
class OrchestratorLeadershipLost(Event):
    """This orchestrator no longer holds the leader lease.

    Attributes:
        reason: ``stopped``, ``taken`` (another holds it), or the database error.
    """

    reason: str


@attrs.frozen(kw_only=True)
class OrchestratorServiceFailed(Event):
    """A maintenance pass raised; the service runs again at its next interval.

    Attributes:
        service: the service's name.
        error: the error, with any password redacted.
    """

    service: str
    error: str


@attrs.frozen(kw_only=True)
class OrchestratorDefinitionHeartbeat(Event):
    """A definition carried by this process had its heartbeat refreshed."""

    definition: str


@attrs.frozen(kw_only=True)
class OrchestratorJobScheduled(Event):
    """A repeat or cron tick enqueued its job.

    Attributes:
        job_id: the job enqueued.
        definition: the repeatable definition.
        tick_at: the tick the job belongs to (unique per definition).
    """

    job_id: int
    definition: str
    tick_at: dt.datetime


@attrs.frozen(kw_only=True)
class OrchestratorTickSkipped(Event):
    """A tick enqueued nothing: the previous tick's job is unfinished (overlap off),
    or the definition is paused.

    Attributes:
        definition: the repeatable definition.
        tick_at: the skipped tick.
        reason: ``overlap`` or ``paused``.
    """

    definition: str
    tick_at: dt.datetime
    reason: str


@attrs.frozen(kw_only=True)
class OrchestratorJobRescued(_JobEvent):
    """A running job was taken back and is available again; the lost attempt counted.

    Attributes:
        reason: ``lease_expired`` or ``worker_lost`` (its worker's heartbeat went stale).
        locked_by: the worker id that held it.
    """

    reason: str
    locked_by: int | None


@attrs.frozen(kw_only=True)
class OrchestratorWorkerLost(Event):
    """A worker whose heartbeat went stale was removed from the worker table.

    Attributes:
        worker_id: the removed worker's id.
    """

    worker_id: int


@attrs.frozen(kw_only=True)
class OrchestratorJobReleased(_JobEvent):
    """A waiting job became available (its dependencies all succeeded).

    Attributes:
        reason: ``dependencies_met``.
    """

    reason: str


@attrs.frozen(kw_only=True)
class OrchestratorJobFinalized(_JobEvent):
    """The orchestrator finalized a job as failed.

    Attributes:
        reason: ``timeout``, ``no_attempts_remaining`` or ``unmet_dependencies``.
    """

    reason: str


@attrs.frozen(kw_only=True)
class OrchestratorFinalizedJobSwept(Event):
    """A job finished longer ago than the retention was deleted from the history.

    Emitted for the rows deleted one by one: those of the history's default
    partition (ids beyond the partitions made when they finished). Jobs that
    go with a whole partition are counted by one
    :class:`OrchestratorHistoryPruned` instead.

    Attributes:
        job_id: the job.
        definition: its definition.
        archived: True when the orchestrator runs with ``archive=True`` (the
            retention was ``archive_retention_ms``, not
            ``finalized_job_threshold_ms``).
    """

    job_id: int
    definition: str
    archived: bool


@attrs.frozen(kw_only=True)
class OrchestratorHistoryPruned(Event):
    """A partition of the history was dropped: every job in it finished before the cutoff.

    One event for the whole partition, however many jobs it held (up to
    1,000,000); no :class:`OrchestratorFinalizedJobSwept` for them.

    Attributes:
        partition: the dropped table's name (``job_history_<first id>``).
        jobs: how many finished jobs it held.
        cutoff: the retention's cutoff: every job in it finished before this.
    """

    partition: str
    jobs: int
    cutoff: dt.datetime


@attrs.frozen(kw_only=True)
class OrchestratorStaleDefinitionSwept(Event):
    """A definition not heartbeated for the threshold and without jobs was deleted."""

    definition: str


@attrs.frozen(kw_only=True)
class OrchestratorQueueGauges(Event):
    """A snapshot of the queue for gauges: unfinished jobs, live daemons, vacuum.

    Emitted by the leader every ``gauges_interval_ms`` (and read by
    :class:`orchestra.metrics.PrometheusHandler`). Finalized jobs are not counted
    here: their rates are the worker's and orchestrator's job events.

    Attributes:
        depth: ``(status, channel, count)`` triples, sorted, for the unfinished
            statuses ``waiting``, ``available`` (due or not) and ``running`` of
            every channel that has a definition or an unfinished job, 0 included.
        workers: daemons whose heartbeat is newer than the stale threshold, by
            role (``worker``, ``orchestrator``), 0 included.
        oldest_transaction_age_s: how long the transaction holding the oldest
            snapshot on the queue's database (a session, a prepared transaction)
            has been open; while it is, autovacuum cannot remove the job rows
            that died after it began. 0.0 when nothing holds one; None when its
            start is not known: a replication slot, or a session of another role
            while the orchestrator's role lacks ``pg_monitor``.
        oldest_transaction_xid_age: how many transaction ids ago that snapshot
            was taken (visible without privileges); 0 when nothing holds one.
        job_dead_tuples: dead rows in the job table, from ``pg_stat_user_tables``
            (None when PostgreSQL has no statistics for it yet).
        job_live_tuples: live rows in the job table, likewise.
        oldest_due: ``(channel, seconds)`` pairs, sorted: how long each
            channel's oldest available job whose ``run_at`` has passed has
            waited since then; 0.0 when none is due.
    """

    depth: tuple[tuple[str, str, int], ...]
    workers: Mapping[str, int]
    oldest_transaction_age_s: float | None = None
    oldest_transaction_xid_age: int | None = None
    job_dead_tuples: int | None = None
    job_live_tuples: int | None = None
    oldest_due: tuple[tuple[str, float], ...] = ()


EventHandler = Callable[[Event], None]


def normalize_handlers(
    handler: EventHandler | Iterable[EventHandler] | None,
) -> tuple[EventHandler, ...]:
    """Accept one handler, several, or None."""
    if handler is None:
        return ()
    if callable(handler):
        return (handler,)
    try:
        handlers: tuple[Any, ...] = tuple(handler)
    except TypeError:
        raise ConfigurationError(
            "event_handler", f"must be a callable or an iterable of callables, not {handler!r}"
        ) from None
    for item in handlers:
        if not callable(item):
            raise ConfigurationError("event_handler", f"{item!r} is not callable")
    return handlers


def dispatch(handlers: tuple[EventHandler, ...], event: Event) -> None:
    """Hand ``event`` to every handler; log and swallow what they raise."""
    for handler in handlers:
        try:
            handler(event)
        except Exception:
            logger.exception("event handler %r raised on %s", handler, type(event).__name__)
