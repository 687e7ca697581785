"""Definition heartbeats: every orchestrator, leader or not.

What it does: sets ``last_heartbeat_at`` of every definition registered in
this process, so that the stale-definition sweep knows they are still carried
by running code; a definition whose row is missing is written again.

Options: ``heartbeat_interval_ms`` (default 60 000).
Events: one OrchestratorDefinitionHeartbeat per definition.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import psycopg

from orchestra import events
from orchestra._orchestrator._service import RunResult, Service


class DefinitionHeartbeat(Service):
    """Heartbeat the definitions this process carries."""

    name: ClassVar[str] = "heartbeat"
    leader_only: ClassVar[bool] = False

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Heartbeat every registered definition; write missing ones again."""
        definitions = self.config.definitions
        if not definitions:
            return RunResult(self.name, {"heartbeated": 0})
        rows = conn.execute(
            self.config.queries["definition_heartbeat_many"],
            {"names": list(definitions), "now": now},
        ).fetchall()
        present = {row[0] for row in rows}
        for name, definition in definitions.items():
            if name not in present:
                definition.upsert(conn)
        return RunResult(
            self.name,
            {"heartbeated": len(definitions), "rewritten": len(definitions) - len(present)},
            tuple(
                events.OrchestratorDefinitionHeartbeat(**self.origin.header(), definition=n)
                for n in definitions
            ),
        )
