"""OpenTelemetry tracing from orchestra's events (extra ``otel``).

Install with ``pip install 'orchestra-queue[otel]'`` (opentelemetry-api; you
also need an SDK and an exporter, as for any OpenTelemetry application), then
hand an :class:`OpenTelemetryHandler` to your workers next to any other
handler::

    from orchestra.otel import OpenTelemetryHandler

    Worker(config, event_handler=[LoggingHandler(), OpenTelemetryHandler()]).run()

Producers need nothing more: when opentelemetry is importable and ``defer``
(or ``defer_async``, ``defer_many``, ``defer_many_async``) runs inside a valid
span, the globally configured propagator injects the current context and it is
stored with the job (column ``trace_context``); workers hand it back on
:class:`~orchestra.events.WorkerJobClaimed`.

Each attempt becomes one span ``orchestra.job <definition>`` of kind CONSUMER,
from the claim to the finish, with the events' own timestamps:

==============================  ===============================================
attribute                       value
==============================  ===============================================
``messaging.system``            ``orchestra``
``messaging.operation.type``    ``process``
``orchestra.job.id``            the job id
``orchestra.job.definition``    the definition's name
``orchestra.job.attempt``       1 for the first attempt
``orchestra.job.max_attempts``  the attempt budget
``orchestra.job.queue_wait_ms`` claim time minus the time the job became runnable
``orchestra.job.tags``          the job's tags, when it has some (a string array)
``orchestra.job.duration_ms``   how long the function ran (succeeded, failed,
                                snoozed, cancelled)
``orchestra.job.will_retry``    failed attempts: whether another attempt follows
``orchestra.job.outcome``       ``succeeded``, ``failed``, ``payload_invalid``,
                                ``released``, ``snoozed``, ``cancelled`` or
                                ``fenced``
``orchestra.job.snooze_s``      snoozed attempts: how long the job snoozed for
``error.type``                  failed attempts: the exception's type name
==============================  ===============================================

The status is OK on success and on a snooze (the function did what it meant
to), ERROR with the error text on a failure (payload invalid included), and
unset when the job was handed back unrun (released), cancelled while it ran
(cancelled), or its finish was refused because it was rescued meanwhile
(fenced).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from orchestra import __version__, events
from orchestra._checks import is_int
from orchestra.errors import ConfigurationError

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:
    raise ImportError(
        "orchestra.otel needs opentelemetry-api: install the 'otel' extra, "
        "pip install 'orchestra-queue[otel]'",
        name=exc.name,
    ) from exc

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["MAX_OPEN_SPANS", "OpenTelemetryHandler"]

#: Default bound of spans started and not yet ended (see ``max_open_spans``).
MAX_OPEN_SPANS = 100_000

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

logger = logging.getLogger("orchestra.otel")


def _ns(timestamp: dt.datetime) -> int:
    """An aware datetime as nanoseconds since the epoch, exact to the microsecond."""
    return (timestamp - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _parent_context(trace_context: str | None) -> Context:
    """The producer's context from a stored carrier, or an empty context (a root span).

    Never the ambient context of the calling thread: a worker started inside a
    span must not adopt every job it runs. A carrier that does not parse is
    ignored (the span becomes a root span) rather than failing the handler.
    """
    if not trace_context:
        return Context()
    try:
        carrier = json.loads(trace_context)
    except ValueError:
        return Context()
    if not isinstance(carrier, dict):
        return Context()
    return propagate.extract({str(k): str(v) for k, v in carrier.items()}, context=Context())


class OpenTelemetryHandler:
    """An event handler that turns each job attempt into an OpenTelemetry span.

    **Parent, not link.** The span of an attempt is a *child* of the span that
    deferred the job (same trace id), not a new root with a link to it. A
    job is one message processed individually, the case where OpenTelemetry's
    messaging conventions allow the creation context as parent; a child span
    puts the defer and every attempt of the job (retries included) in one
    trace, which every tracing backend shows as a waterfall, whereas links are
    shown, when at all, as a reference to follow by hand. The cost is that a
    trace can stretch over the job's delay (a job deferred for tomorrow ends
    its trace tomorrow); backends handle late children. Jobs deferred outside
    any span (or by a producer without opentelemetry) get a root span.

    Spans start at the claim event's timestamp and end at the timestamp of the
    event that reports the attempt's end (succeeded, failed, payload invalid,
    snoozed, cancelled, released, fenced), matched by (daemon id, job id,
    attempt). One handler
    may serve every daemon of a process (a lock guards the open spans).

    Args:
        tracer_provider: where spans go; default the global tracer provider.
        max_open_spans: most spans started and not yet ended. Beyond it the
            oldest is dropped unended (never exported), so a lost end event
            cannot leak memory; ``dropped`` counts them.

    Raises:
        ConfigurationError: ``max_open_spans`` is not a positive integer.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        max_open_spans: int = MAX_OPEN_SPANS,
    ) -> None:
        if not is_int(max_open_spans):
            raise ConfigurationError("max_open_spans", f"must be an int, not {max_open_spans!r}")
        if max_open_spans < 1:
            raise ConfigurationError("max_open_spans", f"must be >= 1, got {max_open_spans}")
        self.max_open_spans = max_open_spans
        self.tracer = trace.get_tracer("orchestra", __version__, tracer_provider=tracer_provider)
        self.dropped = 0
        self._lock = threading.Lock()
        # Insertion-ordered: the first key is the oldest open span.
        self._open: dict[tuple[int, int, int], Span] = {}

    @property
    def open_spans(self) -> int:
        """How many spans are started and not yet ended."""
        with self._lock:
            return len(self._open)

    def __call__(self, event: events.Event) -> None:
        match event:
            case events.WorkerJobClaimed():
                self._start(event)
            case events.WorkerJobSucceeded():
                self._end(
                    event,
                    Status(StatusCode.OK),
                    {
                        "orchestra.job.outcome": "succeeded",
                        "orchestra.job.duration_ms": event.duration_ms,
                    },
                )
            case events.WorkerJobFailed():  # WorkerJobPayloadInvalid too
                invalid = isinstance(event, events.WorkerJobPayloadInvalid)
                error_type = event.error.partition(":")[0].strip() or "Error"
                self._end(
                    event,
                    Status(StatusCode.ERROR, event.error),
                    {
                        "orchestra.job.outcome": "payload_invalid" if invalid else "failed",
                        "orchestra.job.duration_ms": event.duration_ms,
                        "orchestra.job.will_retry": event.will_retry,
                        "error.type": error_type,
                    },
                )
            case events.WorkerJobSnoozed():
                self._end(
                    event,
                    Status(StatusCode.OK),
                    {
                        "orchestra.job.outcome": "snoozed",
                        "orchestra.job.duration_ms": event.duration_ms,
                        "orchestra.job.snooze_s": event.seconds,
                    },
                )
            case events.WorkerJobCancelled():
                self._end(
                    event,
                    None,
                    {
                        "orchestra.job.outcome": "cancelled",
                        "orchestra.job.duration_ms": event.duration_ms,
                    },
                )
            case events.WorkerJobReleased():
                self._end(
                    event,
                    None,
                    {
                        "orchestra.job.outcome": "released",
                        "orchestra.job.release_reason": event.reason,
                    },
                )
            case events.WorkerJobFenced():
                self._end(
                    event,
                    None,
                    {
                        "orchestra.job.outcome": "fenced",
                        "orchestra.job.fenced_outcome": event.outcome,
                    },
                )

    def _start(self, event: events.WorkerJobClaimed) -> None:
        span = self.tracer.start_span(
            f"orchestra.job {event.definition}",
            context=_parent_context(event.trace_context),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "orchestra",
                "messaging.operation.type": "process",
                "orchestra.job.id": event.job_id,
                "orchestra.job.definition": event.definition,
                "orchestra.job.attempt": event.attempt,
                "orchestra.job.max_attempts": event.max_attempts,
                "orchestra.job.queue_wait_ms": event.queue_wait_ms,
                # Left out when empty: an attribute set to [] is noise on every span.
                **({"orchestra.job.tags": list(event.tags)} if event.tags else {}),
            },
            start_time=_ns(event.timestamp),
        )
        key = (event.daemon_id, event.job_id, event.attempt)
        with self._lock:
            self._open.pop(key, None)  # a claim seen twice: the newer one wins
            while len(self._open) >= self.max_open_spans:
                del self._open[next(iter(self._open))]
                self.dropped += 1
                if self.dropped == 1:
                    logger.warning(
                        "more than %d job spans open: dropping the oldest unended "
                        "(end events lost?)",
                        self.max_open_spans,
                    )
            self._open[key] = span

    def _end(
        self,
        event: events.WorkerJobSucceeded
        | events.WorkerJobFailed
        | events.WorkerJobSnoozed
        | events.WorkerJobCancelled
        | events.WorkerJobReleased
        | events.WorkerJobFenced,
        status: Status | None,
        attributes: dict[str, Any],
    ) -> None:
        with self._lock:
            span = self._open.pop((event.daemon_id, event.job_id, event.attempt), None)
        if span is None:
            return  # claimed before this handler was attached, or dropped by the bound
        span.set_attributes(attributes)
        if status is not None:
            span.set_status(status)
        span.end(end_time=_ns(event.timestamp))
