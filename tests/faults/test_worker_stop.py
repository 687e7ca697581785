"""A worker frozen (SIGSTOP) past its jobs' leases, then thawed (SIGCONT).

While it is frozen its leases expire: the orchestrator takes its jobs back and
another worker runs them to success. When it thaws, its job functions return
and it tries to record their finishes: those must be refused (fenced), so no
job succeeds twice, and the thawed worker must go on claiming and running jobs.
"""

from __future__ import annotations

import datetime as dt
import functools
import signal
from typing import Any

import psycopg
from psycopg import sql

from orchestra import JobDefinition
from orchestra.testing import wait_until
from tests.e2e._support import DaemonFactory
from tests.faults._invariants import events, snapshot, success_events
from tests.faults._ledger import daemon_application_name
from tests.faults._report import Report, Scale
from tests.faults._support import (
    basic_checks,
    conclude,
    eventually,
    logs,
    settle,
    start_orchestrator,
    start_worker,
)

#: Long enough that the frozen worker is caught mid-run, short enough for seconds per case.
SLEEP_MS = 400
VICTIM = "frozen"


def _running_in(
    db: psycopg.Connection[Any], schema: str, pid: int, *, started: bool = True
) -> list[int]:
    """The jobs claimed by the worker of process ``pid`` (whose function started, by default)."""
    return [
        int(row[0])
        for row in db.execute(
            sql.SQL(
                "SELECT j.id FROM {s}.job j JOIN {s}.worker w ON w.id = j.locked_by"
                " WHERE j.status = 'running' AND w.pid = %(pid)s AND (NOT %(started)s OR EXISTS ("
                "   SELECT 1 FROM {s}.fault_ledger l WHERE l.job_id = j.id"
                "   AND l.attempt = j.attempt AND l.pid = %(pid)s AND l.finished IS NULL))"
            ).format(s=sql.Identifier(schema)),
            {"pid": pid, "started": started},
        ).fetchall()
    ]


def _succeeded_by(db: psycopg.Connection[Any], schema: str, pid: int, since: dt.datetime) -> bool:
    """Whether the worker of process ``pid`` recorded a succeeded attempt since ``since``.

    By pid: a worker declared dead while frozen registers again under a new id.
    """
    row = db.execute(
        sql.SQL(
            "SELECT count(*) FROM {s}.all_job_attempts a JOIN {s}.worker w ON w.id = a.worker_id"
            " WHERE w.pid = %s AND a.outcome = 'succeeded' AND a.finished_at > %s"
        ).format(s=sql.Identifier(schema)),
        (pid, since),
    ).fetchone()
    assert row is not None
    return int(row[0]) > 0


def _not_succeeded(db: psycopg.Connection[Any], schema: str, job_ids: list[int]) -> list[int]:
    """Those of ``job_ids`` that have not succeeded (a job missing altogether among them)."""
    return [
        int(row[0])
        for row in db.execute(
            sql.SQL(
                "SELECT i.id FROM unnest(%s::bigint[]) AS i(id)"
                " WHERE NOT EXISTS (SELECT 1 FROM {s}.all_jobs j"
                "                   WHERE j.id = i.id AND j.status = 'succeeded')"
                " ORDER BY i.id"
            ).format(s=sql.Identifier(schema)),
            (job_ids,),
        ).fetchall()
    ]


def _all_succeeded(db: psycopg.Connection[Any], schema: str, job_ids: list[int]) -> bool:
    return not _not_succeeded(db, schema, job_ids)


def _open_transactions(db: psycopg.Connection[Any], schema: str) -> list[str]:
    """The daemons' sessions inside a transaction, with their last statement (diagnostics).

    A process frozen halfway through sending a pipelined transaction leaves
    its session in it, holding the row locks it took so far.
    """
    return [
        f"{state}/{wait_event} for {age_ms:.0f} ms, {locks} lock(s): "
        + " ".join(str(query).split())[:160]
        for state, wait_event, age_ms, locks, query in db.execute(
            "SELECT a.state, a.wait_event,"
            " extract(epoch FROM clock_timestamp() - a.xact_start) * 1000,"
            " (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid AND l.granted), a.query"
            " FROM pg_stat_activity a WHERE a.application_name = %s AND a.xact_start IS NOT NULL",
            (daemon_application_name(schema),),
        ).fetchall()
    ]


def _frozen_mid_transaction(db: psycopg.Connection[Any], schema: str) -> bool:
    """Whether a daemon's session is inside a transaction holding row locks."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity a"
        " WHERE a.application_name = %s AND a.xact_start IS NOT NULL"
        " AND EXISTS (SELECT 1 FROM pg_locks l"
        "             WHERE l.pid = a.pid AND l.granted AND l.locktype = 'transactionid')",
        (daemon_application_name(schema),),
    ).fetchone()
    return row is not None and row[0] > 0


def test_a_worker_frozen_past_its_leases_is_fenced_and_keeps_working(
    ledger: str,
    fault_jobs: dict[str, JobDefinition[Any]],
    daemons: DaemonFactory,
    db: psycopg.Connection[Any],
    scale: Scale,
    report: Report,
) -> None:
    """Freeze a busy worker until its jobs succeed elsewhere, thaw it: no double success."""
    cycles = scale.pick(1, 20)
    batch = scale.pick(40, 100)
    start_orchestrator(daemons)
    start_worker(daemons, name="steady", concurrency=4)
    victim = start_worker(daemons, name=VICTIM, concurrency=4)

    job_ids: list[int] = []
    stolen = 0
    not_rescued: list[str] = []
    held_open = 0
    for cycle in range(cycles):
        ids = [h.id for h in fault_jobs["retried"].defer_many([{"sleep_ms": SLEEP_MS}] * batch)]
        job_ids += ids
        wait_until(
            functools.partial(_running_in, db, ledger, victim.pid),
            timeout=60,
            interval=0.02,
            message="the frozen worker never ran a job",
        )
        victim.send(signal.SIGSTOP)
        held = _running_in(db, ledger, victim.pid, started=False)
        try:
            # Frozen until every job it held has been rescued and succeeded elsewhere,
            # which takes at least its lease: the point is to thaw it past that.
            if not eventually(
                functools.partial(_all_succeeded, db, ledger, list(held)),
                timeout=scale.pick(30, 60),
            ):
                if _frozen_mid_transaction(db, ledger):
                    # Frozen between sending its finish and its COMMIT: the rows
                    # it finished are locked by its open transaction until it
                    # resumes (and commits them) or its connection dies, as for
                    # any PostgreSQL client. Nothing is lost; counted, not failed.
                    held_open += 1
                else:
                    not_rescued.append(
                        f"cycle {cycle + 1}: of the jobs {held} the frozen worker held,"
                        f" {_not_succeeded(db, ledger, held)} never succeeded elsewhere;"
                        f" its open transactions: {_open_transactions(db, ledger)}"
                    )
        finally:
            victim.send(signal.SIGCONT)
        stolen += len(held)
        thawed_at = db.execute("SELECT clock_timestamp()").fetchone()
        assert thawed_at is not None
        # The thawed worker keeps working: it records successes of its own again.
        more = [h.id for h in fault_jobs["retried"].defer_many([{"sleep_ms": 20}] * batch)]
        job_ids += more
        wait_until(
            functools.partial(_succeeded_by, db, ledger, victim.pid, thawed_at[0]),
            timeout=60,
            message="the thawed worker never ran a job again",
        )
        assert victim.proc.poll() is None, "the thawed worker exited"

    settled = settle(db, ledger, job_ids, timeout=scale.pick(60, 600))
    snap = snapshot(db, ledger)
    fenced = len(events([victim.log()], "WorkerJobFenced"))
    conclude(
        report,
        snap,
        case="worker-sigstop",
        job_ids=job_ids,
        faults=cycles,
        violations={
            **basic_checks(snap, job_ids),
            "rescued while frozen": not_rescued,
            "settled": [] if settled else ["jobs still unfinished at the deadline"],
            # No daemon was killed, so every success has exactly one event.
            "success events": success_events(snap, logs(daemons), complete=True),
        },
        note=f"rescued={stolen} fenced={fenced} held_by_open_transaction={held_open}",
    )
