"""Names that every process using one schema must agree on.

Producers, workers, orchestrators and the dashboard meet in the database
through these: the NOTIFY channels that wake workers and result waiters, and
the row of the leader lease. They are derived from the schema name alone, so
no process has to ask another.
"""

from __future__ import annotations

import hashlib

#: The key of the orchestrators' row in ``<schema>.leader``.
LEASE_NAME = "orchestrator"

#: PostgreSQL identifiers, channel names included, are at most 63 bytes.
_IDENTIFIER_MAX = 63


def _channel(prefix: str, schema: str) -> str:
    name = prefix + schema
    if len(name) <= _IDENTIFIER_MAX:
        return name
    return prefix + hashlib.sha256(schema.encode()).hexdigest()[:32]


def notify_channel_for(schema: str) -> str:
    """The PostgreSQL NOTIFY channel that wakes the workers of ``schema``.

    Channel names are identifiers (at most 63 bytes): long schema names are hashed.
    """
    return _channel("orchestra_", schema)


def finished_channel_for(schema: str) -> str:
    """The NOTIFY channel that tells result waiters which jobs of ``schema`` were finalized.

    The payload is a comma-separated list of job ids, or empty when the list
    would not fit in a notification: waiters then look up their own job.
    """
    return _channel("orchestra_done_", schema)
