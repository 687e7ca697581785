"""Unit tests of orchestra.events: frozen keyword-only events, handler dispatch."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import attrs
import pytest

from orchestra import ConfigurationError, events

SAMPLE_FIELDS: dict[str, Any] = {
    "timestamp": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    "daemon_id": 1,
    "daemon_name": "anon-worker",
    "role": "worker",
    "host": "host",
    "pid": 123,
    "reason": "stop()",
    "in_flight": 0,
    "error": "RuntimeError: boom",
    "handed_back": 0,
    "operation": "claim",
    "retry_in_ms": 1_000,
    "job_id": 42,
    "definition": "job",
    "attempt": 1,
    "max_attempts": 3,
    "queue_wait_ms": 5,
    "queue_wait_s": 0.0051,
    "trace_context": None,
    "tags": ("billing",),
    "duration_ms": 7,
    "duration_s": 0.0072,
    "traceback": None,
    "oldest_due": (("_default", 2.5),),
    "will_retry": True,
    "retry_at": None,
    "outcome": "succeeded",
    "status": "available",
    "locked_by": None,
    "lease_ms": 15_000,
    "service": "rescuer",
    "tick_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    "worker_id": 7,
    "archived": False,
    "partition": "job_history_0",
    "jobs": 1_000_000,
    "cutoff": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    "depth": (("available", "_default", 3),),
    "workers": {"worker": 1, "orchestrator": 1},
    "oldest_transaction_age_s": 1.5,
    "oldest_transaction_xid_age": 12,
    "job_dead_tuples": 40,
    "job_live_tuples": 100,
    "seconds": 30.0,
    "run_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
}

EVENT_CLASSES: list[type[events.Event]] = [
    obj
    for name in events.__all__
    if isinstance(obj := getattr(events, name), type) and issubclass(obj, events.Event)
]


def _make(cls: type[events.Event]) -> events.Event:
    """An instance of ``cls`` with a sample value for every field."""
    return cls(**{field.name: SAMPLE_FIELDS[field.name] for field in attrs.fields(cls)})


def _started() -> events.DaemonStarted:
    event = _make(events.DaemonStarted)
    assert isinstance(event, events.DaemonStarted)
    return event


class TestEventClasses:
    """Every public event class is a frozen, keyword-only attrs class."""

    def test_all_event_classes_found(self) -> None:
        """events.__all__ exports the base class and every kind of event."""
        assert events.Event in EVENT_CLASSES
        assert events.WorkerJobPayloadInvalid in EVENT_CLASSES
        assert len(EVENT_CLASSES) == 29

    @pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
    def test_frozen(self, cls: type[events.Event]) -> None:
        """Assigning any field of an emitted event raises FrozenInstanceError."""
        event = _make(cls)
        for field in attrs.fields(cls):
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                setattr(event, field.name, SAMPLE_FIELDS[field.name])

    @pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
    def test_kw_only(self, cls: type[events.Event]) -> None:
        """Every field is keyword-only, so positional construction fails."""
        fields = attrs.fields(cls)
        assert all(field.kw_only for field in fields)
        with pytest.raises(TypeError):
            positional: Any = cls  # mypy rightly refuses this call; run it anyway
            positional(*(SAMPLE_FIELDS[field.name] for field in fields))

    @pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
    def test_common_fields(self, cls: type[events.Event]) -> None:
        """Every event carries timestamp, daemon_id, daemon_name and role."""
        names = {field.name for field in attrs.fields(cls)}
        assert {"timestamp", "daemon_id", "daemon_name", "role"} <= names

    def test_payload_invalid_is_a_job_failure(self) -> None:
        """WorkerJobPayloadInvalid is a WorkerJobFailed, so failure handlers see it."""
        assert issubclass(events.WorkerJobPayloadInvalid, events.WorkerJobFailed)
        assert isinstance(_make(events.WorkerJobPayloadInvalid), events.WorkerJobFailed)

    def test_events_compare_by_value(self) -> None:
        """Two events with the same fields are equal."""
        assert _make(events.WorkerJobClaimed) == _make(events.WorkerJobClaimed)


class TestDispatch:
    """dispatch hands an event to every handler and survives handlers that raise."""

    def test_calls_every_handler_in_order(self) -> None:
        """Each handler receives the event, in the order given."""
        calls: list[tuple[str, events.Event]] = []
        event = _started()
        events.dispatch(
            (lambda e: calls.append(("first", e)), lambda e: calls.append(("second", e))), event
        )
        assert calls == [("first", event), ("second", event)]

    def test_raising_handler_is_logged_and_later_handlers_run(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A handler that raises is logged on ``orchestra.events`` and the next one still runs."""
        received: list[events.Event] = []

        def broken(event: events.Event) -> None:
            raise RuntimeError("handler exploded")

        event = _started()
        with caplog.at_level(logging.ERROR, logger="orchestra.events"):
            events.dispatch((broken, received.append), event)
        assert received == [event]
        records = [r for r in caplog.records if r.name == "orchestra.events"]
        assert len(records) == 1
        assert records[0].levelno == logging.ERROR
        assert "DaemonStarted" in records[0].getMessage()
        assert records[0].exc_info is not None
        assert isinstance(records[0].exc_info[1], RuntimeError)

    def test_no_handlers(self) -> None:
        """Dispatching to no handler does nothing."""
        events.dispatch((), _started())


class TestNormalizeHandlers:
    """normalize_handlers accepts None, one callable or an iterable of callables."""

    def test_none(self) -> None:
        """None means no handler."""
        assert events.normalize_handlers(None) == ()

    def test_one_callable(self) -> None:
        """A single callable becomes a one-element tuple."""
        received: list[events.Event] = []
        assert events.normalize_handlers(received.append) == (received.append,)

    def test_list(self) -> None:
        """A list of callables becomes a tuple in the same order."""
        first: list[events.Event] = []
        second: list[events.Event] = []
        assert events.normalize_handlers([first.append, second.append]) == (
            first.append,
            second.append,
        )

    def test_non_callable_item(self) -> None:
        """A non-callable item raises ConfigurationError naming ``event_handler``."""
        received: list[events.Event] = []
        with pytest.raises(ConfigurationError) as info:
            events.normalize_handlers([received.append, "not callable"])  # type: ignore[list-item]
        assert info.value.argument == "event_handler"

    def test_non_callable_non_iterable(self) -> None:
        """A single non-callable, non-iterable handler raises ConfigurationError too."""
        with pytest.raises(ConfigurationError) as info:
            events.normalize_handlers(42)  # type: ignore[arg-type]
        assert info.value.argument == "event_handler"
