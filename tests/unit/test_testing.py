"""Unit tests of orchestra.testing.EventRecorder, without daemons and without sleeping."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from orchestra import events
from orchestra.testing import EventRecorder

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _claimed(job_id: int) -> events.WorkerJobClaimed:
    return events.WorkerJobClaimed(
        timestamp=NOW,
        daemon_id=1,
        daemon_name="anon-worker",
        role="worker",
        job_id=job_id,
        definition="job",
        attempt=1,
        max_attempts=1,
        queue_wait_ms=0,
    )


def _started() -> events.DaemonStarted:
    return events.DaemonStarted(
        timestamp=NOW, daemon_id=1, daemon_name="anon-worker", role="worker", host="h", pid=1
    )


class TestEventRecorder:
    """EventRecorder records events and waits for them with a deadline."""

    def test_records_in_order(self) -> None:
        """Recorded events come back in order, and of_type filters by class."""
        recorder = EventRecorder()
        started, claimed = _started(), _claimed(1)
        recorder(started)
        recorder(claimed)
        assert recorder.events == [started, claimed]
        assert recorder.of_type(events.WorkerJobClaimed) == [claimed]

    def test_events_is_a_copy(self) -> None:
        """Mutating the returned list does not change what was recorded."""
        recorder = EventRecorder()
        recorder(_started())
        recorder.events.clear()
        assert len(recorder.events) == 1

    def test_wait_for_returns_matching_events(self) -> None:
        """wait_for returns the events of the type that match the predicate."""
        recorder = EventRecorder()
        for job_id in (1, 2, 3):
            recorder(_claimed(job_id))
        recorder(_started())
        matched = recorder.wait_for(
            events.WorkerJobClaimed, lambda e: e.job_id >= 2, count=2, timeout=0.05
        )
        assert [e.job_id for e in matched] == [2, 3]

    def test_wait_for_times_out(self) -> None:
        """wait_for raises TimeoutError naming the awaited type once the timeout passes."""
        recorder = EventRecorder()
        recorder(_started())
        with pytest.raises(TimeoutError, match="WorkerJobClaimed"):
            recorder.wait_for(events.WorkerJobClaimed, timeout=0.05)

    def test_wait_for_times_out_when_too_few_match(self) -> None:
        """wait_for raises TimeoutError when fewer than count events match."""
        recorder = EventRecorder()
        recorder(_claimed(1))
        with pytest.raises(TimeoutError, match="saw 1"):
            recorder.wait_for(events.WorkerJobClaimed, count=2, timeout=0.05)

    def test_wait_for_wakes_on_event_from_another_thread(self) -> None:
        """An event recorded by another thread satisfies a waiting wait_for."""
        recorder = EventRecorder()
        producer = threading.Thread(target=recorder, args=(_claimed(9),))
        producer.start()
        try:
            matched = recorder.wait_for(events.WorkerJobClaimed, timeout=10)
        finally:
            producer.join()
        assert [e.job_id for e in matched] == [9]
