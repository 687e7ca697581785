"""LoggingHandler and the formatters: one event, one log line, whatever the event's text fields
hold; a job's own records tagged with the job; a final failure's traceback below its line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading

import pytest

from orchestra import Config, JobContext, JobDefinition, events
from orchestra._worker._attempts import TRACEBACK_MAX_CHARS
from orchestra.handlers import JsonFormatter, LoggingHandler, TextFormatter


def failed(error: str) -> events.WorkerJobFailed:
    return events.WorkerJobFailed(
        daemon_name="w-worker",
        daemon_id=1,
        role="worker",
        timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        job_id=1,
        definition="d",
        attempt=1,
        max_attempts=1,
        error=error,
        will_retry=False,
        retry_at=None,
        duration_ms=1,
    )


@pytest.mark.parametrize(
    "error",
    [
        "ValueError: x\n2026-01-01 CRITICAL forged",
        "ValueError: x\r\nforged",
        "ValueError:x\nCRITICAL:forged",
        "ValueError: x\u2028forged",
        "ValueError:\x1b[31mred",
    ],
)
def test_a_job_error_with_line_breaks_or_escapes_stays_on_one_escaped_line(
    error: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="orchestra.events"):
        LoggingHandler()(failed(error))
    (record,) = caplog.records
    line = record.getMessage()
    assert "\n" not in line and "\r" not in line and "\u2028" not in line and "\x1b" not in line
    assert "error=" in line


def test_a_plain_value_is_logged_as_is(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="orchestra.events"):
        LoggingHandler()(failed("ValueError"))
    assert "error=ValueError " in caplog.records[0].getMessage() + " "


def test_a_dropped_history_partition_is_one_info_line_and_a_swept_job_is_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A partition of a million jobs logs one INFO line; jobs deleted one by one stay at DEBUG."""
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    pruned = events.OrchestratorHistoryPruned(
        daemon_name="o-orchestrator",
        daemon_id=1,
        role="orchestrator",
        timestamp=stamp,
        partition="job_history_0",
        jobs=1_000_000,
        cutoff=dt.datetime(2025, 12, 31, 12, tzinfo=dt.UTC),
    )
    swept = events.OrchestratorFinalizedJobSwept(
        daemon_name="o-orchestrator",
        daemon_id=1,
        role="orchestrator",
        timestamp=stamp,
        job_id=7,
        definition="d",
        archived=False,
    )
    handler = LoggingHandler()
    assert handler.level_of(swept) == logging.DEBUG
    with caplog.at_level(logging.INFO, logger="orchestra.events"):
        handler(pruned)
        handler(swept)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "o-orchestrator OrchestratorHistoryPruned partition=job_history_0 jobs=1000000"
        " cutoff=2025-12-31T12:00:00+00:00"
    )


# -- a job's own records, in text and JSON --------------------------------------------


def job_record(caplog: pytest.LogCaptureFixture, cfg: Config) -> logging.LogRecord:
    """The record of one line a job function logs through ``ctx.logger``."""
    definition = JobDefinition(cfg, name="send_mail", job_function=lambda: None)
    ctx = JobContext(
        job_id=123, attempt=2, max_attempts=3, definition=definition, stop=threading.Event()
    )
    with caplog.at_level(logging.INFO, logger="orchestra.job"):
        ctx.logger.info("sent %d mails", 4)
    (record,) = caplog.records
    return record


def test_a_job_functions_text_line_ends_with_its_job(
    caplog: pytest.LogCaptureFixture, cfg: Config
) -> None:
    """A line logged through ctx.logger ends with the job's id, definition and attempt."""
    record = job_record(caplog, cfg)
    line = TextFormatter().format(record)
    assert line.endswith(" INFO    sent 4 mails job=123 definition=send_mail attempt=2"), line


def test_a_job_functions_json_line_has_its_job(
    caplog: pytest.LogCaptureFixture, cfg: Config
) -> None:
    """In JSON the same record has job_id, definition and attempt fields besides the message."""
    document = json.loads(JsonFormatter().format(job_record(caplog, cfg)))
    assert document["message"] == "sent 4 mails"
    assert document["logger"] == "orchestra.job.send_mail"
    assert (document["job_id"], document["definition"], document["attempt"]) == (
        123,
        "send_mail",
        2,
    )


def test_a_job_functions_exception_follows_its_tagged_line(
    caplog: pytest.LogCaptureFixture, cfg: Config
) -> None:
    """With exc_info the job's tags stay on the message line and the traceback follows it."""
    definition = JobDefinition(cfg, name="send_mail", job_function=lambda: None)
    ctx = JobContext(
        job_id=5, attempt=1, max_attempts=1, definition=definition, stop=threading.Event()
    )
    with caplog.at_level(logging.INFO, logger="orchestra.job"):
        try:
            raise KeyError("recipient")
        except KeyError:
            ctx.logger.exception("lookup failed")
    first, *rest = TextFormatter().format(caplog.records[0]).splitlines()
    assert first.endswith("lookup failed job=5 definition=send_mail attempt=1")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "KeyError: 'recipient'"


def test_other_records_get_no_job_fields(caplog: pytest.LogCaptureFixture) -> None:
    """A record that is not a job's is formatted as before: no tags, no job fields."""
    with caplog.at_level(logging.INFO, logger="app"):
        logging.getLogger("app").info("hello")
    (record,) = caplog.records
    assert TextFormatter().format(record).endswith(" INFO    hello")
    assert set(json.loads(JsonFormatter().format(record))) == {"time", "level", "logger", "message"}


# -- a final failure's traceback ------------------------------------------------------


TRACE = (
    "Traceback (most recent call last):\n"
    '  File "jobs.py", line 3, in send\n'
    "    raise ValueError(text)\n"
    "ValueError: no such recipient\n"
)


def failed_with(trace: str | None, *, will_retry: bool = False) -> events.WorkerJobFailed:
    return events.WorkerJobFailed(
        daemon_name="w-worker",
        daemon_id=1,
        role="worker",
        timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        job_id=1,
        definition="d",
        attempt=3,
        max_attempts=3,
        error="ValueError: no such recipient",
        will_retry=will_retry,
        retry_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) if will_retry else None,
        duration_ms=1,
        traceback=trace,
    )


def logged(caplog: pytest.LogCaptureFixture, event: events.Event) -> logging.LogRecord:
    with caplog.at_level(logging.INFO, logger="orchestra.events"):
        LoggingHandler()(event)
    (record,) = caplog.records
    return record


def test_a_final_failure_logs_its_traceback_below_its_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last attempt's failure is an ERROR line, then its traceback, every line indented."""
    record = logged(caplog, failed_with(TRACE))
    assert record.levelno == logging.ERROR
    first, *rest = TextFormatter().format(record).splitlines()
    assert 'error="ValueError: no such recipient"' in first
    assert "traceback=" not in first
    assert rest == ["    " + line for line in TRACE.splitlines()]


def test_a_final_failure_has_its_traceback_in_json(caplog: pytest.LogCaptureFixture) -> None:
    """In JSON the traceback is one field, as stored."""
    document = json.loads(JsonFormatter().format(logged(caplog, failed_with(TRACE))))
    assert document["event"] == "WorkerJobFailed"
    assert document["traceback"] == TRACE
    assert document["error"] == "ValueError: no such recipient"


def test_a_failure_that_will_be_retried_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retried attempt stays one WARNING line; its traceback is in the attempt log."""
    record = logged(caplog, failed_with(TRACE, will_retry=True))
    assert record.levelno == logging.WARNING
    assert "\n" not in TextFormatter().format(record)
    assert "traceback" not in json.loads(JsonFormatter().format(record))


def test_a_final_failure_without_a_traceback_is_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a traceback (a payload that did not fit, say) the final failure is its line alone."""
    record = logged(caplog, failed_with(None))
    assert "\n" not in TextFormatter().format(record)
    assert "traceback" not in json.loads(JsonFormatter().format(record))


def test_a_logged_traceback_is_bounded_like_the_stored_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A traceback longer than the stored length is cut to it, keeping both ends."""
    huge = "Traceback (most recent call last):\n" + "x" * (3 * TRACEBACK_MAX_CHARS) + "\nEnd: it"
    document = json.loads(JsonFormatter().format(logged(caplog, failed_with(huge))))
    kept = document["traceback"]
    assert len(kept) < TRACEBACK_MAX_CHARS + 100
    assert kept.startswith("Traceback (most recent call last):")
    assert kept.endswith("End: it")


@pytest.mark.parametrize(
    "message",
    [
        "x\n2026-01-01 00:00:00,000 CRITICAL forged",
        "x\r\nCRITICAL forged",
        "x\rCRITICAL forged",
        "x\u2028CRITICAL forged",
        "x\x1b[2Kforged",
    ],
)
def test_a_traceback_cannot_forge_a_log_line(
    message: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every line of a logged traceback is indented and free of carriage returns and escapes."""
    record = logged(caplog, failed_with(f"{TRACE}ValueError: {message}\n"))
    _first, *rest = TextFormatter().format(record).splitlines()
    text = "\n".join(rest)
    assert all(line.startswith("    ") for line in text.split("\n"))
    assert "\r" not in text and "\u2028" not in text and "\x1b" not in text
