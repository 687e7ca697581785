"""LoggingHandler: one event, one log line, whatever the event's text fields hold."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from orchestra import events
from orchestra.handlers import LoggingHandler


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
