"""The orchestrator leader SIGKILLed again and again while a repeat job ticks every second.

Two orchestrators run; the one holding the leader lease is killed and a
replacement started, repeatedly. Each time the other must take over once the
lease runs out, and ticks must keep coming, never one tick enqueued twice
(the unique ``(definition, tick_at)`` index and the locked definition row see
to that even if two leaders overlap) and never two ticks closer than the
interval.
"""

from __future__ import annotations

import datetime as dt
import functools
import signal
from typing import Any

import psycopg
from psycopg import sql

from orchestra.testing import wait_until
from tests.e2e._support import Daemon, DaemonFactory
from tests.faults._invariants import doubled_ticks, events, snapshot, tick_count
from tests.faults._ledger import TICK_INTERVAL_MS
from tests.faults._report import Report, Scale
from tests.faults._support import (
    basic_checks,
    conclude,
    logs,
    settle,
    start_orchestrator,
    start_worker,
)

#: The leader lease: a killed leader is replaced after about this long.
LEASE_MS = 1_000
#: Ticks that must be enqueued after each takeover before the next kill.
TICKS_PER_LEADER = 2


def _leader_pid(db: psycopg.Connection[Any], schema: str) -> int:
    """The process holding an unexpired leader lease (0 if none).

    The holder is ``host:pid:daemon id:nonce``.
    """
    row = db.execute(
        sql.SQL("SELECT holder FROM {s}.leader WHERE expires_at > clock_timestamp()").format(
            s=sql.Identifier(schema)
        )
    ).fetchone()
    return int(str(row[0]).split(":")[1]) if row else 0


def _new_leader(
    db: psycopg.Connection[Any], schema: str, candidates: list[Daemon], old: int
) -> int:
    """The pid of a live candidate that now leads instead of ``old`` (0 while none does)."""
    pid = _leader_pid(db, schema)
    return pid if pid != old and pid in {d.pid for d in candidates} else 0


def _tick_ids(db: psycopg.Connection[Any], schema: str) -> list[int]:
    return [
        int(row[0])
        for row in db.execute(
            sql.SQL("SELECT id FROM {s}.all_jobs WHERE definition = 'tick'").format(
                s=sql.Identifier(schema)
            )
        ).fetchall()
    ]


def _ticks_beyond(db: psycopg.Connection[Any], schema: str, count: int) -> bool:
    return len(_tick_ids(db, schema)) >= count


def test_killing_the_leader_during_ticks_never_doubles_a_tick(
    ledger: str,
    daemons: DaemonFactory,
    db: psycopg.Connection[Any],
    scale: Scale,
    report: Report,
) -> None:
    """Kill the leader, let the other take over, repeat: ticks keep coming, none twice."""
    kills = scale.pick(2, 15)
    start_worker(daemons, name="ticker", concurrency=2, ticks=True)
    orchestrators = [
        start_orchestrator(daemons, name=f"o{i}", lease_ms=LEASE_MS, ticks=True) for i in range(2)
    ]
    deadline = scale.pick(60, 120)
    leader = wait_until(
        functools.partial(_new_leader, db, ledger, orchestrators, 0),
        timeout=deadline,
        message="no orchestrator became leader",
    )

    killed = 0
    for _ in range(kills):
        # Kill only a leader that is ticking: wait for ticks enqueued under it.
        seen = len(_tick_ids(db, ledger))
        wait_until(
            functools.partial(_ticks_beyond, db, ledger, seen + TICKS_PER_LEADER),
            timeout=deadline,
            message="ticks stopped coming",
        )
        victim = next(d for d in orchestrators if d.pid == leader)
        victim.send(signal.SIGKILL)
        victim.wait(timeout=30)
        killed += 1
        orchestrators.remove(victim)
        orchestrators.append(
            start_orchestrator(daemons, name=f"o{killed + 1}", lease_ms=LEASE_MS, ticks=True)
        )
        leader = wait_until(
            functools.partial(_new_leader, db, ledger, orchestrators, leader),
            timeout=deadline,
            message="no orchestrator took over from the killed leader",
        )

    # Ticks keep coming under the last leader.
    seen = len(_tick_ids(db, ledger))
    wait_until(
        functools.partial(_ticks_beyond, db, ledger, seen + TICKS_PER_LEADER),
        timeout=deadline,
        message="ticks stopped coming after the last takeover",
    )
    for orchestrator in orchestrators:  # no more ticks: every tick job can finish
        orchestrator.send(signal.SIGTERM)
        orchestrator.wait(timeout=30)
    job_ids = _tick_ids(db, ledger)
    settled = settle(db, ledger, job_ids, timeout=deadline)
    snap = snapshot(db, ledger)
    takeovers = len(events(logs(daemons), "OrchestratorLeadershipAcquired"))
    conclude(
        report,
        snap,
        case="leader-sigkill",
        job_ids=job_ids,
        faults=killed,
        violations={
            **basic_checks(snap, job_ids),
            "settled": [] if settled else ["tick jobs still unfinished at the deadline"],
            "ticks": doubled_ticks(snap, "tick", dt.timedelta(milliseconds=TICK_INTERVAL_MS)),
            "takeovers": []
            if takeovers >= killed + 1
            else [f"{takeovers} leaderships acquired for {killed} kills"],
        },
        note=f"ticks={tick_count(snap, 'tick')} takeovers={takeovers}",
    )
