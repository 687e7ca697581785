"""Unit tests of how events are built: a daemon's origin, the header, typed event classes."""

from __future__ import annotations

import datetime as dt
import typing
from typing import Any

import attrs
import pytest

from orchestra import Config, Orchestrator, Worker, events
from orchestra._daemon import Daemon
from orchestra._event_origin import STANDALONE_ORCHESTRATOR, EventHeader, EventOrigin
from orchestra._orchestrator._finalizer import Finalizer
from tests.unit.test_events import EVENT_CLASSES, SAMPLE_FIELDS

ORIGIN = EventOrigin(daemon_id=7, daemon_name="unit-worker", role="worker")
HEADER_FIELDS = {field.name for field in attrs.fields(events.Event)}


def _mentions_any(hint: object) -> bool:
    return hint is Any or any(_mentions_any(arg) for arg in typing.get_args(hint))


class Idle(Daemon):
    """A daemon that does nothing, to reach what every daemon shares."""

    role = "worker"

    async def _main(self) -> None:
        """Nothing to do."""

    def _in_flight(self) -> int:
        return 0


class TestHeader:
    def test_header_holds_exactly_the_fields_every_event_has(self) -> None:
        """EventHeader declares the base Event's fields with the same types, and no other."""
        assert typing.get_type_hints(EventHeader) == typing.get_type_hints(events.Event)

    def test_header_is_stamped_now_in_utc_with_the_origin(self) -> None:
        """A header carries the origin's identity and an aware UTC time taken when it is made."""
        before = dt.datetime.now(dt.UTC)
        header = ORIGIN.header()
        assert before <= header["timestamp"] <= dt.datetime.now(dt.UTC)
        assert header["timestamp"].tzinfo is dt.UTC
        assert (header["daemon_id"], header["daemon_name"], header["role"]) == (
            7,
            "unit-worker",
            "worker",
        )

    def test_a_service_built_alone_emits_as_a_standalone_orchestrator(self, cfg: Config) -> None:
        """A service built without an orchestrator (in a test) still has an orchestrator's origin."""
        service = Finalizer(cfg, interval_ms=5_000)
        assert service.origin == STANDALONE_ORCHESTRATOR
        assert service.origin.role == "orchestrator"


class TestEventClasses:
    @pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
    def test_every_event_is_built_from_a_header_and_its_own_fields(
        self, cls: type[events.Event]
    ) -> None:
        """A header plus the event's own fields is all an event needs."""
        own = {
            f.name: SAMPLE_FIELDS[f.name] for f in attrs.fields(cls) if f.name not in HEADER_FIELDS
        }
        header = ORIGIN.header()
        event = cls(**header, **own)
        assert (event.timestamp, event.daemon_id, event.daemon_name, event.role) == (
            header["timestamp"],
            7,
            "unit-worker",
            "worker",
        )

    @pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
    def test_every_field_has_a_concrete_type(self, cls: type[events.Event]) -> None:
        """No field of an event is typed Any, so mypy checks every value given to it."""
        hints = typing.get_type_hints(cls)
        assert set(hints) == {f.name for f in attrs.fields(cls)}
        assert [name for name, hint in hints.items() if _mentions_any(hint)] == []


class TestDaemonEmit:
    def test_origin_is_the_daemons_identity(self, cfg: Config) -> None:
        """A daemon's events carry its id, its ``<name>-<role>`` and its role."""
        worker = Worker(cfg, name="unit")
        assert worker._origin == EventOrigin(
            daemon_id=worker.daemon_id, daemon_name="unit-worker", role="worker"
        )

    def test_a_built_event_reaches_every_handler_as_it_is(self) -> None:
        """_emit hands the very event it is given to each handler, in order."""
        first: list[events.Event] = []
        second: list[events.Event] = []
        daemon = Idle(name="unit", event_handler=[first.append, second.append])
        event = events.WorkerListenRestored(**daemon._origin.header())
        daemon._emit(event)
        assert first == [event] and second == [event]
        assert first[0] is event

    def test_wants_events_only_with_a_handler(self) -> None:
        """Hot paths may skip building events when no handler is attached."""
        received: list[events.Event] = []
        assert not Idle(name="unit", event_handler=None)._wants_events
        assert Idle(name="unit", event_handler=received.append)._wants_events

    def test_stop_request_carries_the_reason_and_the_origin(self) -> None:
        """DaemonStopRequested, built by stop(), names the reason and the daemon."""
        received: list[events.Event] = []
        daemon = Idle(name="unit", event_handler=received.append)
        daemon.stop("test")
        (requested,) = received
        assert requested == events.DaemonStopRequested(
            timestamp=requested.timestamp,
            daemon_id=daemon.daemon_id,
            daemon_name="unit-worker",
            role="worker",
            reason="test",
            in_flight=0,
        )

    def test_an_orchestrator_gives_its_origin_to_every_service(self, cfg: Config) -> None:
        """The maintenance services build their events as the orchestrator that runs them."""
        orchestrator = Orchestrator(cfg, name="unit")
        assert orchestrator._origin.daemon_name == "unit-orchestrator"
        assert [s.origin for s in orchestrator.services] == [orchestrator._origin] * len(
            orchestrator.services
        )
