"""Worker daemons as real processes: exactly-once work, graceful and forced stops, crashes.

Each test starts ``orchestra daemon --role worker`` child processes on a schema
of its own. Jobs record every execution in the ``ledger`` table on a separate
connection (see ``tests/e2e/apps/_jobs.py``), so what really ran is observable
even when an attempt's finish is refused or never written.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import signal
import time
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from orchestra import Config, JobDefinition
from orchestra.testing import wait_until
from tests._worker_sql import finish_params
from tests.e2e._support import DaemonFactory, Queue, elapsed_since, stays_true
from tests.e2e.apps._jobs import LIMITED_RELEASE_INTERVAL_MS

Jobs = dict[str, JobDefinition[Any]]


def rescue_expired(config: Config, now: dt.datetime | None = None) -> list[tuple[Any, ...]]:
    """Run the rescue of expired leases as the orchestrator does (``now``: the database clock)."""
    with config.connection() as conn:
        return conn.execute(
            config.queries["job_rescue_expired"],
            {"now": now, "limit": 100, "notify_channel": config.notify_channel},
        ).fetchall()


def test_rate_limit_holds_across_worker_processes(
    queue: Queue, jobs: Jobs, daemons: DaemonFactory
) -> None:
    """Starts of a rate-limited definition over two worker processes are >= R apart, and others are not held up."""
    workers = [daemons.start(concurrency=4, name=f"w{i}") for i in range(2)]
    limited = {h.id for h in jobs["limited"].defer_many([{} for _ in range(6)])}
    quick = {h.id for h in jobs["quick"].defer_many([{} for _ in range(40)])}
    wait_until(
        lambda: queue.value("SELECT count(*) FROM {s}.all_jobs WHERE status <> 'succeeded'") == 0,
        timeout=60,
        message="not every job succeeded",
    )
    starts = queue.rows(
        "SELECT a.started_at, a.job_id FROM {s}.all_job_attempts a ORDER BY a.started_at"
    )
    limited_starts = [t for t, job in starts if job in limited]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(limited_starts)]
    assert len(limited_starts) == 6 and min(gaps) >= LIMITED_RELEASE_INTERVAL_MS / 1000, gaps
    last_quick = max(t for t, job in starts if job in quick)
    assert (
        last_quick < limited_starts[-1]
    )  # the unlimited jobs did not wait behind the limited ones
    for worker in workers:
        worker.send(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


def test_three_workers_run_each_of_300_jobs_exactly_once(
    queue: Queue, jobs: Jobs, daemons: DaemonFactory
) -> None:
    """Three worker processes (concurrency 4) run each of 300 jobs exactly once."""
    workers = [daemons.start(concurrency=4, name=f"w{i}") for i in range(3)]
    handles = jobs["quick"].defer_many([{"n": n} for n in range(300)])
    ids = {h.id for h in handles}
    assert len(ids) == 300

    wait_until(
        lambda: queue.value("SELECT count(*) FROM {s}.all_jobs WHERE status <> 'succeeded'") == 0,
        timeout=60,
        message="not every job succeeded",
    )

    ledger = queue.rows("SELECT job_id, attempt, pid FROM {s}.ledger")
    runs = collections.Counter(job_id for job_id, _, _ in ledger)
    assert set(runs) == ids
    assert [job for job, count in runs.items() if count != 1] == [], "a job ran twice"
    assert {attempt for _, attempt, _ in ledger} == {1}
    pids = {pid for _, _, pid in ledger}
    assert pids <= {w.pid for w in workers}
    assert len(pids) >= 2, f"all the work went to one process: {pids}"

    attempts = queue.rows("SELECT job_id, attempt, outcome FROM {s}.all_job_attempts")
    assert len(attempts) == 300
    assert {job_id for job_id, _, _ in attempts} == ids
    assert {(a, o) for _, a, o in attempts} == {(1, "succeeded")}
    assert queue.value("SELECT count(*) FROM {s}.all_jobs WHERE attempt <> 1") == 0
    # Each success is its job's history row, with no attempt-log row left behind.
    assert queue.value("SELECT count(*) FROM {s}.job_attempt") == 0
    assert queue.value("SELECT count(*) FROM {s}.job") == 0

    for worker in workers:
        worker.send(signal.SIGTERM)
    assert [w.wait(timeout=20) for w in workers] == [0, 0, 0]
    assert queue.workers() == 0


def test_sigterm_finishes_running_jobs_and_claims_nothing_new(
    queue: Queue, jobs: Jobs, daemons: DaemonFactory
) -> None:
    """After SIGTERM a worker claims no new job, lets running ones finish, exits 0."""
    worker = daemons.start(concurrency=5, shutdown_grace_ms=30_000)
    running = [h.id for h in jobs["quick"].defer_many([{"gate": "release"}] * 3)]
    wait_until(
        lambda: queue.value("SELECT count(*) FROM {s}.ledger") == 3,
        message="the 3 gated jobs did not all start",
    )

    stopped_at = time.monotonic()
    worker.send(signal.SIGTERM)
    worker.wait_for_log("DaemonStopRequested")
    later = [h.id for h in jobs["quick"].defer_many([{"n": n} for n in range(2)])]

    def later_untouched() -> bool:
        rows = queue.rows(
            "SELECT status::text, attempt FROM {s}.all_jobs WHERE id = ANY(%s)", (later,)
        )
        return rows == [("available", 0)] * 2

    # Two slots are free and a NOTIFY was sent: a live claim loop would take them.
    assert stays_true(later_untouched, 1.0), "a stopping worker claimed a new job"
    assert worker.proc.poll() is None, "the worker did not wait for its running jobs"
    # While it drains, the heartbeat keeps the leases (1 s) alive, or they would be rescued.
    assert queue.value(
        "SELECT bool_and(locked_until > clock_timestamp()) FROM {s}.job WHERE id = ANY(%s)",
        (running,),
    ), "a draining worker let its leases expire"

    queue.open_gate("release")
    assert worker.wait(timeout=20) == 0
    assert elapsed_since(stopped_at) < 30, "the worker outlived its grace period"

    for job_id in running:
        job = queue.job(job_id)
        assert (job["status"], job["attempt"]) == ("succeeded", 1)
        assert queue.attempts(job_id) == [(1, "succeeded")]
        assert queue.ledger(job_id) == [(1, worker.pid, True)]
    assert later_untouched()
    assert queue.value("SELECT count(*) FROM {s}.ledger WHERE job_id = ANY(%s)", (later,)) == 0
    assert queue.workers() == 0, "the worker row was not deleted"
    log = worker.log()
    assert "DaemonStopRequested reason=SIGTERM in_flight=3" in log
    assert "DaemonStopped error=None handed_back=0" in log


@pytest.mark.parametrize(
    ("definition", "status", "finalized"),
    [
        ("gated", "available", False),
        ("gated_once", "failed", True),
        ("gated_async", "available", False),
    ],
    ids=["attempts-left", "last-attempt", "async-job"],
)
def test_grace_exceeded_interrupts_the_job_and_exits(
    queue: Queue,
    jobs: Jobs,
    daemons: DaemonFactory,
    definition: str,
    status: str,
    finalized: bool,
) -> None:
    """A job still running when the grace period ends is recorded as interrupted."""
    worker = daemons.start(shutdown_grace_ms=500)
    job_id = jobs[definition].defer({"gate": "never"}).id
    wait_until(lambda: queue.ledger(job_id), message="the job did not start")

    stopped_at = time.monotonic()
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    elapsed = elapsed_since(stopped_at)
    assert 0.5 <= elapsed < 5, f"exited {elapsed:.2f} s after SIGTERM with a 0.5 s grace"

    job = queue.job(job_id)
    assert (job["status"], job["attempt"]) == (status, 1)
    assert (job["finalized_at"] is not None) is finalized
    assert job["lock_token"] is None
    assert "interrupted" in job["last_error"]
    assert queue.attempts(job_id) == [(1, "interrupted")]
    assert queue.ledger(job_id) == [(1, worker.pid, False)], "the job function never returned"
    assert queue.workers() == 0
    assert "DaemonStopped error=None handed_back=1" in worker.log()


def test_sigkilled_worker_job_is_rescued_after_its_lease_and_its_late_finish_is_fenced(
    queue: Queue, config: Config, jobs: Jobs, daemons: DaemonFactory
) -> None:
    """A SIGKILLed worker's job stays leased, then is rescued; its late finish is refused."""
    worker_a = daemons.start(name="a")
    job_id = jobs["gated"].defer({"gate": "second-attempt"}).id
    wait_until(lambda: queue.ledger(job_id), message="worker A did not start the job")
    held = queue.job(job_id)
    assert (held["status"], held["attempt"]) == ("running", 1)
    a_worker_id = queue.value("SELECT id FROM {s}.worker WHERE pid = %s", (worker_a.pid,))
    assert held["locked_by"] == a_worker_id

    worker_a.proc.kill()
    assert worker_a.wait(timeout=10) == -signal.SIGKILL
    # Dead: nothing extends the lease any more.
    lease_end = queue.job(job_id)["locked_until"]

    worker_b = daemons.start(name="b")
    probe = jobs["quick"].defer({"probe": True}).id
    wait_until(
        lambda: queue.job(probe)["status"] == "succeeded",
        message="worker B did not run the probe job",
    )
    assert queue.ledger(probe) == [(1, worker_b.pid, True)]
    now_held = queue.job(job_id)
    assert (now_held["status"], now_held["attempt"]) == ("running", 1)
    assert (now_held["lock_token"], now_held["locked_by"]) == (held["lock_token"], a_worker_id)
    assert queue.ledger(job_id) == [(1, worker_a.pid, False)]

    # A lease not yet expired is never taken back, even by the rescue.
    assert rescue_expired(config, now=lease_end - dt.timedelta(milliseconds=1)) == []
    wait_until(
        lambda: queue.value(
            "SELECT locked_until < clock_timestamp() FROM {s}.job WHERE id = %s", (job_id,)
        ),
        message="the lease never expired",
    )
    rescued = rescue_expired(config)
    assert [(r[0], r[2], r[3]) for r in rescued] == [(job_id, 1, "available")]
    assert queue.attempts(job_id) == [(1, "lost")]
    assert "lease expired" in queue.job(job_id)["last_error"]

    wait_until(lambda: len(queue.ledger(job_id)) == 2, message="worker B did not retry the job")
    queue.open_gate("second-attempt")
    wait_until(
        lambda: queue.job(job_id)["status"] == "succeeded",
        message="the retried job did not succeed",
    )
    assert queue.ledger(job_id) == [(1, worker_a.pid, False), (2, worker_b.pid, True)]
    done = queue.job(job_id)
    assert done["attempt"] == 2
    assert done["result"] == {"job_id": job_id, "attempt": 2, "pid": worker_b.pid}
    assert queue.attempts(job_id) == [(1, "lost"), (2, "succeeded")]

    # The fence: worker A's attempt 1 reports success after all.
    with config.connection() as conn:
        late = conn.execute(
            config.queries["job_finish_many"],
            finish_params(
                config,
                job_id=job_id,
                attempt=1,
                token=held["lock_token"],
                started_at=held["started_at"],
                outcome="succeeded",
                result=Jsonb({"late": True}),
                worker_id=a_worker_id,
                worker_name="a-worker",
            ),
        ).fetchall()
    assert late == []
    assert queue.job(job_id) == done
    assert queue.attempts(job_id) == [(1, "lost"), (2, "succeeded")]

    worker_b.send(signal.SIGTERM)
    assert worker_b.wait(timeout=20) == 0


def test_frozen_worker_that_wakes_after_the_rescue_is_fenced(
    queue: Queue, config: Config, jobs: Jobs, daemons: DaemonFactory
) -> None:
    """A worker frozen past its lease (SIGSTOP) finishes its job late and is refused."""
    worker_a = daemons.start(name="a")
    worker_b = daemons.start(name="b")
    job_id = jobs["gated"].defer({"gate": "open"}).id
    wait_until(lambda: queue.ledger(job_id), message="the job did not start")
    (_, first_pid, _), *_ = queue.ledger(job_id)
    frozen, other = (worker_a, worker_b) if first_pid == worker_a.pid else (worker_b, worker_a)

    frozen.send(signal.SIGSTOP)
    try:
        wait_until(
            lambda: queue.value(
                "SELECT locked_until < clock_timestamp() FROM {s}.job WHERE id = %s", (job_id,)
            ),
            message="the frozen worker's lease never expired",
        )
        assert [(r[0], r[3]) for r in rescue_expired(config)] == [(job_id, "available")]
        wait_until(lambda: len(queue.ledger(job_id)) == 2, message="the job was not retried")
        queue.open_gate("open")
        wait_until(
            lambda: queue.job(job_id)["status"] == "succeeded",
            message="the retry did not succeed",
        )
        done = queue.job(job_id)
    finally:
        frozen.send(signal.SIGCONT)

    # The frozen attempt sees its gate open, returns, and its finish is refused.
    frozen.wait_for_log("WorkerJobFenced")
    wait_until(
        lambda: queue.ledger(job_id) == [(1, frozen.pid, True), (2, other.pid, True)],
        message="the frozen attempt did not return after SIGCONT",
    )
    assert done["attempt"] == 2
    assert done["result"] == {"job_id": job_id, "attempt": 2, "pid": other.pid}
    assert queue.job(job_id) == done
    assert queue.attempts(job_id) == [(1, "lost"), (2, "succeeded")]

    for worker in (frozen, other):
        worker.send(signal.SIGTERM)
    assert [frozen.wait(timeout=20), other.wait(timeout=20)] == [0, 0]
    assert queue.workers() == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGINT, signal.SIGINT),
        (signal.SIGTERM, signal.SIGINT),
    ],
    ids=["term-term", "int-int", "term-int"],
)
def test_second_signal_stops_at_once(
    queue: Queue,
    jobs: Jobs,
    daemons: DaemonFactory,
    first: signal.Signals,
    second: signal.Signals,
) -> None:
    """A second stop signal ends the worker at once despite a long grace and a blocked job."""
    worker = daemons.start(shutdown_grace_ms=60_000)
    job_id = jobs["gated"].defer({"gate": "never"}).id
    wait_until(lambda: queue.ledger(job_id), message="the job did not start")

    stopped_at = time.monotonic()
    worker.send(first)
    worker.wait_for_log("DaemonStopRequested")
    assert worker.proc.poll() is None, "the first signal did not wait for the running job"
    worker.send(second)
    assert worker.wait(timeout=10) == 0
    assert elapsed_since(stopped_at) < 10

    job = queue.job(job_id)
    assert (job["status"], job["attempt"]) == ("available", 1)
    assert queue.attempts(job_id) == [(1, "interrupted")]
    assert queue.workers() == 0
    log = worker.log()
    assert "second stop request" in log
    assert "DaemonStopped error=None handed_back=1" in log
