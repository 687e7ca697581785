"""The leader lease: one row in ``<schema>.leader``, expiry on the database clock.

The holder renews well before expiry; a follower tries at the same cadence and
takes the lease once it has expired, so a dead leader is replaced within one
lease period (plus one try interval). The holder trusts its lease only until
``lease_ms`` after it *sent* its last successful renewal, minus a margin,
which is never later than the expiry the database recorded: two orchestrators
never both believe they lead. A database error means "not leader". What must
never happen twice (a repeat tick) is also guarded by a unique index.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from orchestra._config import Config
from orchestra._schema_names import LEASE_NAME


class Elector:
    """Takes, renews and gives up the leader lease for one orchestrator."""

    def __init__(self, config: Config, *, holder: str, lease_ms: int) -> None:
        self.config = config
        self.holder = holder
        self.lease_ms = lease_ms
        self._trusted_until = 0.0

    @property
    def try_interval_s(self) -> float:
        """How often to renew (as leader) or try (as follower)."""
        return self.lease_ms / 4000

    @property
    def is_leader(self) -> bool:
        """True while the last renewal is recent enough to be trusted."""
        return time.monotonic() < self._trusted_until

    def attempt(self, conn: psycopg.Connection[Any]) -> bool:
        """Take or renew the lease; True if held afterwards. Raises on database errors."""
        sent = time.monotonic()
        row = conn.execute(
            self.config.queries["leader_attempt_elect"],
            {
                "name": LEASE_NAME,
                "holder": self.holder,
                "lease_ms": self.lease_ms,
            },
        ).fetchone()
        if row is None:
            self._trusted_until = 0.0
            return False
        # A margin of a tenth of the lease covers clock-rate differences.
        self._trusted_until = sent + self.lease_ms * 0.9 / 1000
        return True

    def forget(self) -> None:
        """Stop trusting the lease (after a database error)."""
        self._trusted_until = 0.0

    def resign(self, conn: psycopg.Connection[Any]) -> None:
        """Give the lease up so that another orchestrator takes over at once."""
        self._trusted_until = 0.0
        conn.execute(
            self.config.queries["leader_resign"], {"name": LEASE_NAME, "holder": self.holder}
        )
