"""Workers SIGKILLed again and again under load.

Several workers run retried, rate-limited, concurrency-capped and resource-keyed jobs; every time a
slice of the jobs has finished, one worker that holds running jobs is
SIGKILLed and a replacement started. An orchestrator gives the dead workers'
jobs back (expired leases, stale heartbeats). Delivery is at least once, so
jobs may run twice; none may be lost, and none may succeed twice.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
from typing import Any

import psycopg
from psycopg import sql

from orchestra import JobDefinition
from tests.e2e._support import Daemon, DaemonFactory
from tests.faults._invariants import (
    concurrency_exceeded,
    rate_limit_broken,
    resource_keys_shared,
    snapshot,
    success_events,
)
from tests.faults._ledger import MAX_CONCURRENCY, RELEASE_INTERVAL_MS
from tests.faults._report import Report, Scale
from tests.faults._support import (
    basic_checks,
    conclude,
    logs,
    settle,
    start_orchestrator,
    start_worker,
    wait_finished,
)


def _running_on(db: psycopg.Connection[Any], schema: str, daemon: Daemon) -> int:
    """How many jobs are running under the worker row of ``daemon``'s process."""
    row = db.execute(
        sql.SQL(
            "SELECT count(*) FROM {s}.job j JOIN {s}.worker w ON w.id = j.locked_by"
            " WHERE j.status = 'running' AND w.pid = %s"
        ).format(s=sql.Identifier(schema)),
        (daemon.pid,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_sigkilled_workers_lose_no_job_and_succeed_none_twice(
    ledger: str,
    fault_jobs: dict[str, JobDefinition[Any]],
    daemons: DaemonFactory,
    db: psycopg.Connection[Any],
    scale: Scale,
    report: Report,
) -> None:
    """Kill a busy worker, start another, repeat: every job ends succeeded, once."""
    workers_alive = 3
    kills = scale.pick(3, 25)
    plain = scale.pick(240, 6_000)
    capped = scale.pick(30, 600)
    keyed_per_key = scale.pick(10, 100)
    limited = scale.pick(20, 300)
    keys = 4
    rng = random.Random(1)

    start_orchestrator(daemons)
    workers = [start_worker(daemons, name=f"w{i}", concurrency=4) for i in range(workers_alive)]

    job_ids = [h.id for h in fault_jobs["retried"].defer_many([{"sleep_ms": 20}] * plain)]
    job_ids += [h.id for h in fault_jobs["capped"].defer_many([{"sleep_ms": 20}] * capped)]
    job_ids += [h.id for h in fault_jobs["limited"].defer_many([{"sleep_ms": 5}] * limited)]
    for key in range(keys):
        job_ids += [
            h.id
            for h in fault_jobs["keyed"].defer_many(
                [{"sleep_ms": 10}] * keyed_per_key, resource_key=f"k{key}"
            )
        ]
    total = len(job_ids)

    killed = 0
    step = total // (kills + 1)
    for round_ in range(kills):
        # Pace the kills on progress, not on time: one per slice of finished jobs.
        wait_finished(db, ledger, job_ids, step * (round_ + 1), timeout=scale.pick(60, 600))
        busy = [w for w in workers if _running_on(db, ledger, w) > 0] or workers
        victim = rng.choice(busy)
        victim.send(signal.SIGKILL)
        victim.wait(timeout=30)
        killed += 1
        workers.remove(victim)
        workers.append(start_worker(daemons, name=f"w{workers_alive + killed}", concurrency=4))

    settled = settle(db, ledger, job_ids, timeout=scale.pick(90, 1_200))
    snap = snapshot(db, ledger)
    conclude(
        report,
        snap,
        case="worker-sigkill",
        job_ids=job_ids,
        faults=killed,
        violations={
            **basic_checks(snap, job_ids),
            "settled": [] if settled else ["jobs still unfinished at the deadline"],
            "max_concurrency": concurrency_exceeded(snap, "capped", MAX_CONCURRENCY),
            "resource keys": resource_keys_shared(snap),
            "rate limit": rate_limit_broken(
                snap, "limited", dt.timedelta(milliseconds=RELEASE_INTERVAL_MS)
            ),
            "success events": success_events(snap, logs(daemons), complete=False),
        },
    )
