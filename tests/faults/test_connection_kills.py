"""Every connection of every daemon terminated by the server, again and again, under load.

From a connection of its own, the case terminates (``pg_terminate_backend``)
all the server processes of the case's daemons, workers and orchestrator
alike, each time a slice of the jobs has finished. A statement whose reply is
lost leaves its outcome unknown to the daemon: a claim or a finish may or may
not have committed. The jobs have ``num_attempts=1``, so a claim the worker
forgot (rescued later as lost) would fail a job that never ran, and a finish
written again would be refused and its success never reported. Neither may
happen: no job fails without having run, and every success has its
``WorkerJobSucceeded`` event (no daemon dies here, so none can be missing).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from orchestra import JobDefinition
from tests.e2e._support import DaemonFactory
from tests.faults._invariants import events, rate_limit_broken, snapshot, success_events
from tests.faults._ledger import RELEASE_INTERVAL_MS
from tests.faults._report import Report, Scale
from tests.faults._support import (
    basic_checks,
    conclude,
    daemon_backends,
    finished_count,
    logs,
    settle,
    start_orchestrator,
    start_worker,
    terminate,
    wait_finished,
)


def test_terminated_connections_fail_no_job_unrun_and_lose_no_success_event(
    ledger: str,
    fault_jobs: dict[str, JobDefinition[Any]],
    daemons: DaemonFactory,
    db: psycopg.Connection[Any],
    scale: Scale,
    report: Report,
) -> None:
    """Terminate the daemons' connections repeatedly: every job runs, every success is told."""
    total = scale.pick(400, 6_000)
    rounds = scale.pick(12, 150)
    start_orchestrator(daemons)
    workers = [start_worker(daemons, name=f"w{i}", concurrency=8) for i in range(2)]

    job_ids = [h.id for h in fault_jobs["once"].defer_many([{"sleep_ms": 2}] * total)]
    # A few rate-limited jobs too: their claim path locks the definition row.
    job_ids += [h.id for h in fault_jobs["limited"].defer_many([{}] * scale.pick(20, 200))]
    step = max(1, total // (rounds + 1))
    terminated = 0
    done_rounds = 0
    for round_ in range(rounds):
        # One round per slice of finished jobs: the daemons get to work between rounds.
        wait_finished(db, ledger, job_ids, step * (round_ + 1), timeout=scale.pick(60, 600))
        if finished_count(db, ledger, job_ids) >= len(job_ids):
            break
        terminated += terminate(db, [pid for pid, _ in daemon_backends(db, ledger)])
        done_rounds += 1

    settled = settle(db, ledger, job_ids, timeout=scale.pick(90, 900))
    snap = snapshot(db, ledger)
    exited = [f"daemon {d.pid} exited" for d in daemons.daemons if d.proc.poll() is not None]
    conclude(
        report,
        snap,
        case="connections-terminated",
        job_ids=job_ids,
        faults=terminated,
        violations={
            **basic_checks(snap, job_ids),
            "settled": [] if settled else ["jobs still unfinished at the deadline"],
            "success events": success_events(snap, logs(daemons), complete=True),
            "daemons alive": exited,
            "rate limit": rate_limit_broken(
                snap, "limited", dt.timedelta(milliseconds=RELEASE_INTERVAL_MS)
            ),
        },
        note=f"rounds={done_rounds} "
        f"database_errors={len(events(logs(daemons), 'DaemonDatabaseError'))}"
        f" workers={len(workers)}",
    )
