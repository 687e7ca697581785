"""Who emits an event: the fields every event shares, stamped at its call site.

Every event is built where it happens, as its own class, from a header plus
its fields: ``events.DaemonStarted(**origin.header(), host=host, pid=pid)``.
The header is a TypedDict, so mypy checks each construction in full (an
unknown or missing field, a wrong type), and building the event runs attrs'
own checks even when no handler is attached.
"""

from __future__ import annotations

import datetime as dt
from typing import TypedDict

import attrs

from orchestra import events


class EventHeader(TypedDict):
    """The fields of :class:`orchestra.events.Event` itself, spread into every event."""

    timestamp: dt.datetime
    daemon_id: int
    daemon_name: str
    role: events.Role


@attrs.frozen(kw_only=True)
class EventOrigin:
    """The daemon an event comes from.

    Attributes:
        daemon_id: unique per daemon within its process.
        daemon_name: ``<name>-<role>``.
        role: the kind of daemon.
    """

    daemon_id: int
    daemon_name: str
    role: events.Role

    def header(self) -> EventHeader:
        """The shared fields of an event emitted now by this daemon."""
        return {
            "timestamp": dt.datetime.now(dt.UTC),
            "daemon_id": self.daemon_id,
            "daemon_name": self.daemon_name,
            "role": self.role,
        }


#: The origin of events built by a maintenance service that runs without an
#: Orchestrator (a test driving ``run_once`` directly).
STANDALONE_ORCHESTRATOR = EventOrigin(
    daemon_id=0, daemon_name="standalone-orchestrator", role="orchestrator"
)
