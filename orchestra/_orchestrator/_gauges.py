"""Queue gauges: a snapshot of the queue for metrics (leader only).

What it does: counts the unfinished jobs per status (``waiting``,
``available``, ``running``) and channel, how long each channel's oldest due
job has waited, and the live daemons per role (a heartbeat newer than
``worker_stale_threshold_ms``), in one read-only statement
(``metrics_gauges`` in ``orchestra/sql/monitoring.sql``, which says what it
costs); reads what holds back vacuum on the queue's database (the oldest
transaction) and the job table's dead rows (``health_vacuum_horizon`` in the
same file, also read by ``orchestra health`` and the dashboard); and emits
them as one event. It changes nothing. :func:`read_queue_snapshot` is that
read; a ``PrometheusHandler`` given the queue runs it when scraped, in any
process (orchestra/metrics.py).

Options: ``gauges_interval_ms`` (default 15 000).
Events: one OrchestratorQueueGauges per pass.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import psycopg
from psycopg.rows import dict_row

from orchestra import events
from orchestra._config import Config
from orchestra._event_origin import STANDALONE_ORCHESTRATOR, EventOrigin
from orchestra._orchestrator._service import RunResult, Service

#: Default age past which a transaction holding back vacuum is worth a
#: warning (`orchestra health`, the dashboard). The job table churns: every
#: job is updated at least twice and then deleted, so minutes of held-back
#: cleanup already cost index and heap bloat under load.
TRANSACTION_WARNING_S_DEFAULT = 300.0

#: What an operator should do when a holder's details are hidden.
MONITOR_HINT = "grant pg_monitor to this role to see its age and state"


@attrs.frozen
class TransactionHolder:
    """What holds the oldest snapshot (or transaction id) on the queue's database.

    Attributes:
        kind: ``session``, ``prepared`` (a prepared transaction) or
            ``replication_slot`` (a slot's xmin, for instance a standby with
            hot_standby_feedback).
        pid: the session's (or the slot's active walsender's) process id.
        state: ``idle in transaction``, ``active``, ...; ``prepared``; a slot's
            ``active``/``inactive``. None when hidden.
        application_name: as the session set it.
        user: the session's or prepared transaction's role.
        name: the prepared transaction's gid or the slot's name.
        age_s: seconds since its transaction (or prepared transaction)
            began; None for a slot, or when hidden.
        xid_age: transaction ids consumed since its snapshot.
        hidden: this role may not see the session's details (it needs
            pg_monitor, or pg_read_all_stats).
    """

    kind: str
    pid: int | None
    state: str | None
    application_name: str | None
    user: str | None
    name: str | None
    age_s: float | None
    xid_age: int
    hidden: bool

    def describe(self) -> str:
        """One phrase naming the holder, for a warning line."""
        if self.kind == "prepared":
            return f"prepared transaction {self.name!r} of user {self.user!r}"
        if self.kind == "replication_slot":
            active = "" if self.pid is None else f", walsender pid {self.pid}"
            return f"replication slot {self.name!r} ({self.state}{active})"
        details = [f"pid {self.pid}"]
        if self.state is not None:
            details.append(f"state {self.state!r}")
        if self.application_name:
            details.append(f"application {self.application_name!r}")
        if self.user is not None:
            details.append(f"user {self.user!r}")
        return f"transaction ({', '.join(details)})"

    def as_dict(self) -> dict[str, Any]:
        """The holder as JSON-able data."""
        return attrs.asdict(self)


@attrs.frozen
class VacuumHorizon:
    """What keeps autovacuum from cleaning the job table, and how much it has to clean.

    Attributes:
        oldest: the holder of the oldest snapshot, None when nothing holds one.
        holders: sessions, prepared transactions and slots holding a snapshot.
        job_live_tuples: live rows of the job table (statistics, approximate).
        job_dead_tuples: dead rows not yet removed by vacuum.
        job_last_autovacuum: when autovacuum last finished on the job table.
        job_last_vacuum: when a manual VACUUM last did.
    """

    oldest: TransactionHolder | None
    holders: int
    job_live_tuples: int | None
    job_dead_tuples: int | None
    job_last_autovacuum: dt.datetime | None
    job_last_vacuum: dt.datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> VacuumHorizon:
        """Build it from a row of the ``health_vacuum_horizon`` query."""
        oldest = None
        if row["kind"] is not None:
            oldest = TransactionHolder(
                kind=row["kind"],
                pid=row["pid"],
                state=row["state"],
                application_name=row["application_name"],
                user=row["user_name"],
                name=row["name"],
                age_s=None if row["age_s"] is None else max(0.0, float(row["age_s"])),
                xid_age=int(row["xid_age"] or 0),
                hidden=bool(row["hidden"]),
            )

        def count(value: Any) -> int | None:
            return None if value is None else int(value)

        return cls(
            oldest=oldest,
            holders=int(row["holders"]),
            job_live_tuples=count(row["job_live_tuples"]),
            job_dead_tuples=count(row["job_dead_tuples"]),
            job_last_autovacuum=row["job_last_autovacuum"],
            job_last_vacuum=row["job_last_vacuum"],
        )

    @property
    def oldest_age_s(self) -> float | None:
        """Age of the oldest transaction: 0.0 without one, None when not known."""
        return 0.0 if self.oldest is None else self.oldest.age_s

    def warning(self, threshold_s: float, schema: str) -> str | None:
        """Why cleanup is held back, when the oldest transaction is at least ``threshold_s`` old."""
        age_s = self.oldest_age_s
        if self.oldest is None or age_s is None or age_s < threshold_s:
            return None
        dead = (
            ""
            if self.job_dead_tuples is None
            else f" ({self.job_dead_tuples} dead rows in {schema}.job now)"
        )
        if self.oldest.kind == "prepared":
            remedy = "COMMIT PREPARED or ROLLBACK PREPARED it"
        else:
            remedy = f"end it (in its client, or SELECT pg_terminate_backend({self.oldest.pid}))"
        return (
            f"the {self.oldest.describe()} holding the oldest snapshot has been open "
            f"{age_s:.1f} s (warning from {threshold_s:g} s): autovacuum cannot remove the "
            f"job rows that died since{dead}; {remedy}"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able data: the holder, and the job table's statistics."""
        return {
            "oldest_transaction": None if self.oldest is None else self.oldest.as_dict(),
            "holders": self.holders,
            "job_table": {
                "live_tuples": self.job_live_tuples,
                "dead_tuples": self.job_dead_tuples,
                "last_autovacuum": self.job_last_autovacuum,
                "last_vacuum": self.job_last_vacuum,
            },
        }


def read_vacuum_horizon(conn: psycopg.Connection[Any], config: Config) -> VacuumHorizon:
    """Run ``health_vacuum_horizon`` on ``conn``."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(config.queries["health_vacuum_horizon"], {"schema": config.schema})
        row = cursor.fetchone()
    assert row is not None
    return VacuumHorizon.from_row(row)


@attrs.frozen
class QueueSnapshot:
    """The queue as the gauges show it, read in one statement, and the vacuum horizon.

    Attributes:
        depth: ``(status, channel, count)`` for the unfinished statuses
            ``waiting``, ``available`` and ``running`` of every channel that has
            a definition or an unfinished job, 0 included, sorted.
        oldest_due: ``(channel, seconds)`` for the same channels, sorted: how
            long the channel's oldest available job whose ``run_at`` has passed
            has waited since then; 0.0 when none is due.
        daemons: daemons whose heartbeat is newer than the stale threshold, by
            role (``worker``, ``orchestrator``), 0 included.
        horizon: what holds back vacuum, and the job table's row counts.
    """

    depth: tuple[tuple[str, str, int], ...]
    oldest_due: tuple[tuple[str, float], ...]
    daemons: Mapping[str, int]
    horizon: VacuumHorizon


def read_queue_snapshot(
    conn: psycopg.Connection[Any],
    config: Config,
    *,
    worker_stale_threshold_ms: int,
    now: dt.datetime | None = None,
) -> QueueSnapshot:
    """Run ``metrics_gauges`` and ``health_vacuum_horizon`` on ``conn``.

    ``now`` replaces the database clock (tests); a daemon is live when its
    heartbeat is newer than ``worker_stale_threshold_ms``.
    """
    rows = conn.execute(
        config.queries["metrics_gauges"], {"now": now, "threshold_ms": worker_stale_threshold_ms}
    ).fetchall()
    return QueueSnapshot(
        depth=tuple(
            (str(label), str(channel), int(n))
            for kind, label, channel, n, _age in rows
            if kind == "depth"
        ),
        oldest_due=tuple(
            (str(channel), max(0.0, float(age)))
            for kind, _label, channel, _n, age in rows
            if kind == "oldest_due"
        ),
        daemons={str(label): int(n) for kind, label, _, n, _age in rows if kind == "workers"},
        horizon=read_vacuum_horizon(conn, config),
    )


class QueueGauges(Service):
    """Count unfinished jobs and live daemons; read what holds back vacuum."""

    name: ClassVar[str] = "gauges"

    def __init__(
        self,
        config: Config,
        *,
        interval_ms: int,
        worker_stale_threshold_ms: int,
        origin: EventOrigin = STANDALONE_ORCHESTRATOR,
    ) -> None:
        super().__init__(config, interval_ms=interval_ms, origin=origin)
        self.worker_stale_threshold_ms = worker_stale_threshold_ms

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Read the snapshot and emit it; counts are left empty (nothing was changed)."""
        snapshot = read_queue_snapshot(
            conn, self.config, worker_stale_threshold_ms=self.worker_stale_threshold_ms, now=now
        )
        horizon = snapshot.horizon
        return RunResult(
            self.name,
            events=(
                events.OrchestratorQueueGauges(
                    **self.origin.header(),
                    depth=snapshot.depth,
                    workers=snapshot.daemons,
                    oldest_transaction_age_s=horizon.oldest_age_s,
                    oldest_transaction_xid_age=(
                        0 if horizon.oldest is None else horizon.oldest.xid_age
                    ),
                    job_dead_tuples=horizon.job_dead_tuples,
                    job_live_tuples=horizon.job_live_tuples,
                    oldest_due=snapshot.oldest_due,
                ),
            ),
        )
