"""Ready-made event handlers.

:class:`LoggingHandler` writes one line per event through :mod:`logging`
(logger ``orchestra.events``), with the event's fields attached to the record
as ``record.event_fields`` for structured formatters. :class:`JsonFormatter`
renders such records as one JSON object per line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import attrs

from orchestra import events

#: Per-job success lines are the bulk of a busy worker's output; they are
#: INFO, claims are DEBUG. Failures that will be retried are WARNING, final
#: failures and database errors ERROR.
_LEVELS: dict[type[events.Event], int] = {
    events.WorkerJobClaimed: logging.DEBUG,
    events.WorkerJobFailed: logging.WARNING,
    events.WorkerJobPayloadInvalid: logging.WARNING,
    events.WorkerJobReleased: logging.WARNING,
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


def event_fields(event: events.Event) -> dict[str, Any]:
    """The event's own fields (without the envelope), JSON-friendly."""
    fields = attrs.asdict(event, recurse=False)
    for key in _ENVELOPE:
        fields.pop(key, None)
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in fields.items()}


class LoggingHandler:
    """An event handler that logs every event as one line.

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
        return _LEVELS.get(type(event), logging.INFO)

    def __call__(self, event: events.Event) -> None:
        level = self.level_of(event)
        if not self.logger.isEnabledFor(level):
            return
        fields = event_fields(event)
        text = " ".join(f"{key}={_short(value)}" for key, value in fields.items())
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
    text = str(value)
    # Quoted (JSON-escaped) when it has spaces, is empty, or holds a line break
    # or another unprintable character: a job's error text must not be able to
    # start a forged log line.
    if isinstance(value, str) and (" " in text or not text or not text.isprintable()):
        text = json.dumps(text if len(text) <= 300 else text[:297] + "...")
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and event fields if any."""

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
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
