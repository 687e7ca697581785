"""The worker's LISTEN connection terminated by the server, again and again.

The worker polls only every :data:`POLL_MS` here, so jobs that run sooner
than half of that were woken by NOTIFY: after each termination the worker
must listen again (on a new server process), run the jobs deferred while it
was not listening (it catches up when the listener is back), and run new jobs
without waiting for its poll.
"""

from __future__ import annotations

import functools
from typing import Any

import psycopg
from psycopg import sql

from orchestra import JobDefinition
from orchestra.testing import wait_until
from tests.e2e._support import DaemonFactory
from tests.faults._invariants import events, snapshot, success_events
from tests.faults._report import Report, Scale
from tests.faults._support import (
    basic_checks,
    conclude,
    daemon_backends,
    logs,
    settle,
    start_worker,
    terminate,
)

#: The worker's polling interval: far longer than any wake-up by NOTIFY.
POLL_MS = 60_000
#: How long a wake-up may take: half the polling interval, so a job that ran
#: within it was woken by NOTIFY (or the catch-up after listening again).
WAKE_DEADLINE_S = POLL_MS / 1000 / 2


def _listener(db: psycopg.Connection[Any], schema: str, *, not_pid: int = 0) -> int:
    """The server process of the worker's LISTEN connection (0 while there is none)."""
    pids = [
        pid
        for pid, query in daemon_backends(db, schema)
        if query.startswith("LISTEN") and pid != not_pid
    ]
    return pids[0] if pids else 0


def _max_wait_ms(db: psycopg.Connection[Any], schema: str, job_ids: list[int]) -> float:
    """The longest time from defer to claim among ``job_ids``, by the database's clock."""
    row = db.execute(
        sql.SQL(
            "SELECT coalesce(max(extract(epoch FROM started_at - created_at)), 0) * 1000"
            " FROM {s}.all_jobs WHERE id = ANY(%s)"
        ).format(s=sql.Identifier(schema)),
        (job_ids,),
    ).fetchone()
    assert row is not None
    return float(row[0])


def test_a_terminated_listen_connection_is_replaced_and_wakeups_resume(
    ledger: str,
    fault_jobs: dict[str, JobDefinition[Any]],
    daemons: DaemonFactory,
    db: psycopg.Connection[Any],
    scale: Scale,
    report: Report,
) -> None:
    """Kill LISTEN, defer, wait for a new LISTEN, defer: all jobs run long before a poll."""
    rounds = scale.pick(3, 30)
    batch = scale.pick(20, 100)
    worker = start_worker(
        daemons, name="listener", concurrency=4, extra=["--process-interval-ms", str(POLL_MS)]
    )
    listening = wait_until(
        functools.partial(_listener, db, ledger), timeout=30, message="the worker never listened"
    )

    job_ids: list[int] = []
    slowest_ms = 0.0
    missed: list[str] = []
    for round_ in range(rounds):
        assert terminate(db, [listening]) == 1
        # Deferred while the worker is not listening: run by its catch-up.
        during = [h.id for h in fault_jobs["once"].defer_many([{}] * batch)]
        listening = wait_until(
            functools.partial(_listener, db, ledger, not_pid=listening),
            timeout=30,
            message="the worker never listened again",
        )
        # Deferred once it listens again: woken by NOTIFY.
        after = [h.id for h in fault_jobs["once"].defer_many([{}] * batch)]
        job_ids += during + after
        if not settle(db, ledger, during + after, timeout=WAKE_DEADLINE_S):
            missed.append(f"round {round_ + 1}: jobs waited for the poll, not woken by NOTIFY")
            break
        slowest_ms = max(slowest_ms, _max_wait_ms(db, ledger, after))

    snap = snapshot(db, ledger)
    lost_events = len(events([worker.log()], "WorkerListenLost"))
    restored = len(events([worker.log()], "WorkerListenRestored"))
    conclude(
        report,
        snap,
        case="listen-terminated",
        job_ids=job_ids,
        faults=rounds,
        violations={
            **basic_checks(snap, job_ids),
            "woken": missed,
            "success events": success_events(snap, logs(daemons), complete=True),
            "listen events": []
            if lost_events == restored == rounds
            else [f"{lost_events} WorkerListenLost, {restored} WorkerListenRestored for {rounds}"],
        },
        note=f"slowest_wakeup_ms={slowest_ms:.0f}",
    )
