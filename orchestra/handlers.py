"""Ready-made event handlers and log formatters.

:class:`LoggingHandler` writes one line per event through :mod:`logging`
(logger ``orchestra.events``), with the event's fields attached to the record
as ``record.event_fields`` for structured formatters. :class:`JsonFormatter`
renders such records as one JSON object per line, :class:`TextFormatter` as
lines for people. Both add the job's id, definition and attempt to the records
a job function logs through ``ctx.logger``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import attrs

from orchestra import events
from orchestra._names import escape_unprintable
from orchestra._worker._attempts import TRACEBACK_MAX_CHARS
from orchestra._worker._describe import storable

__all__ = [
    "TEXT_FORMAT",
    "JsonFormatter",
    "LoggingHandler",
    "TextFormatter",
    "event_fields",
    "job_fields",
]

#: Per-job success lines are the bulk of a busy worker's output; they are
#: INFO, claims are DEBUG. Failures that will be retried are WARNING, final
#: failures and database errors ERROR.
_LEVELS: dict[type[events.Event], int] = {
    events.WorkerJobClaimed: logging.DEBUG,
    events.WorkerJobFailed: logging.WARNING,
    events.WorkerJobPayloadInvalid: logging.WARNING,
    events.WorkerJobReleased: logging.WARNING,
    # A snooze is the job's own plan; a cancel was asked for by someone:
    # both INFO, like a success.
    events.WorkerJobSnoozed: logging.INFO,
    events.WorkerJobCancelled: logging.INFO,
    events.WorkerJobFenced: logging.WARNING,
    events.WorkerListenLost: logging.WARNING,
    events.DaemonDatabaseError: logging.ERROR,
    events.OrchestratorJobRescued: logging.WARNING,
    events.OrchestratorWorkerLost: logging.WARNING,
    events.OrchestratorJobFinalized: logging.ERROR,
    events.OrchestratorServiceFailed: logging.ERROR,
    events.OrchestratorLeadershipLost: logging.WARNING,
    events.OrchestratorDefinitionHeartbeat: logging.DEBUG,
    events.OrchestratorFinalizedJobSwept: logging.DEBUG,
    # One line per dropped history partition, however many jobs it held.
    events.OrchestratorHistoryPruned: logging.INFO,
    events.OrchestratorQueueGauges: logging.DEBUG,
}
_ENVELOPE = ("timestamp", "daemon_id", "daemon_name", "role")
#: What ``ctx.logger`` attaches to a job's records, and the keys of the text format.
_JOB_FIELDS = (("job_id", "job"), ("definition", "definition"), ("attempt", "attempt"))
#: The text format of ``orchestra`` commands: time, level, message.
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def event_fields(event: events.Event) -> dict[str, Any]:
    """The event's own fields (without the envelope), JSON-friendly."""
    fields = attrs.asdict(event, recurse=False)
    for key in _ENVELOPE:
        fields.pop(key, None)
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in fields.items()}


def job_fields(record: logging.LogRecord) -> dict[str, Any]:
    """``job_id``, ``definition`` and ``attempt`` of a record logged through ``ctx.logger``.

    Empty for any other record.
    """
    if getattr(record, "job_id", None) is None:
        return {}
    return {name: getattr(record, name, None) for name, _key in _JOB_FIELDS}


def _final_traceback(event: events.Event) -> str | None:
    """The traceback to log with ``event``: a job's last failed attempt's, if it has one.

    Bounded like the stored one. Attempts that will be retried log their error
    line only (their tracebacks are in the attempt log).
    """
    if not isinstance(event, events.WorkerJobFailed) or event.will_retry:
        return None
    trace = event.traceback
    if not trace:
        return None
    return storable(trace, TRACEBACK_MAX_CHARS)


class LoggingHandler:
    """An event handler that logs every event as one line.

    A job's final failure also logs its traceback, when the event carries one:
    on the lines after it in text, as ``traceback`` in the record's event
    fields (and so in JSON).

    Args:
        logger: where to log; default ``logging.getLogger("orchestra.events")``.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("orchestra.events")

    def level_of(self, event: events.Event) -> int:
        """The log level of ``event``."""
        if isinstance(event, events.WorkerJobFailed) and not event.will_retry:
            return logging.ERROR
        if isinstance(event, events.DaemonStopped) and event.error is not None:
            return logging.ERROR
        if isinstance(event, events.OrchestratorLeadershipLost) and event.reason == "stopped":
            return logging.INFO
        # The closest class that has a level: a subclass of an event logs like it.
        return next(
            (_LEVELS[kind] for kind in type(event).__mro__ if kind in _LEVELS), logging.INFO
        )

    def __call__(self, event: events.Event) -> None:
        level = self.level_of(event)
        if not self.logger.isEnabledFor(level):
            return
        fields = event_fields(event)
        fields.pop("traceback", None)
        text = " ".join(f"{key}={_short(value)}" for key, value in fields.items())
        trace = _final_traceback(event)
        if trace is not None:
            fields["traceback"] = trace
            text += "\n" + _indented(trace)
        self.logger.log(
            level,
            "%s %s %s",
            event.daemon_name,
            type(event).__name__,
            text,
            extra={
                "event_name": type(event).__name__,
                "event_fields": fields,
                "daemon_name": event.daemon_name,
            },
        )


def _short(value: object) -> str:
    # Seconds to the microsecond are precise enough to read; the full float is noise.
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    # Quoted (JSON-escaped) when it has spaces, is empty, or holds a line break
    # or another unprintable character: a job's error text must not be able to
    # start a forged log line.
    if isinstance(value, str) and (" " in text or not text or not text.isprintable()):
        text = json.dumps(text if len(text) <= 300 else text[:297] + "...")
    return text


def _indented(trace: str) -> str:
    """A traceback as continuation lines: each indented, unprintable characters escaped.

    No line of it starts at the margin, and none holds a carriage return or an
    escape sequence, so a job's error text cannot pass for a line of its own.
    """
    lines = trace.replace("\r\n", "\n").rstrip("\n").split("\n")
    return "\n".join("    " + escape_unprintable(line) for line in lines)


class TextFormatter(logging.Formatter):
    """Lines for people: time, level and message (``TEXT_FORMAT`` unless given).

    A record that a job function logged through ``ctx.logger`` ends with its
    job: ``... message job=123 definition=send_mail attempt=2``.
    """

    def __init__(self, fmt: str | None = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        text = super().formatMessage(record)
        fields = job_fields(record)
        tags = " ".join(
            f"{key}={_short(fields[name])}"
            for name, key in _JOB_FIELDS
            if fields.get(name) is not None
        )
        return f"{text} {tags}" if tags else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and event fields if any.

    A record logged through ``ctx.logger`` also has ``job_id``, ``definition``
    and ``attempt``.
    """

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event_name = getattr(record, "event_name", None)
        if event_name is not None:
            payload["event"] = event_name
            payload["daemon"] = getattr(record, "daemon_name", None)
            payload.update(getattr(record, "event_fields", {}))
        else:
            payload["message"] = record.getMessage()
            payload.update(job_fields(record))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
