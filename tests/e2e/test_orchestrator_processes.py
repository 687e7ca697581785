"""Orchestrator daemons as real processes: one leader, exactly-once ticks, takeover, rescue.

Each test starts ``orchestra daemon --role orchestrator`` (and worker) child
processes on a schema of its own, with the app ``tests/e2e/apps/repeat_app.py``:
an interval definition ticking every whole second and a cron definition ticking
every even second, plus the ledger-writing jobs of ``tests/e2e/apps/_jobs.py``.
Orchestrators log JSON lines (``--log-format json``) unless a test reads the
text form; what happened is checked on the rows of the jobs (unfinished ones in
``job``, finished ones in ``job_history``), the leader and the attempt log.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from collections.abc import Iterable, Sequence
from typing import Any, LiteralString, NamedTuple

from orchestra import JobDefinition
from orchestra.testing import wait_until
from tests.e2e._support import Daemon, DaemonFactory, Queue, elapsed_since

Jobs = dict[str, JobDefinition[Any]]

# The names and periods of tests/e2e/apps/repeat_app.py (which cannot be
# imported here: it builds its Config from the child processes' environment).
APP = "tests.e2e.apps.repeat_app:config"
INTERVAL = "every_second"
CRON = "every_two_seconds"
CRON_PERIOD_S = 2

LEASE_MS = 1_500
LEASE_S = LEASE_MS / 1000
#: How often a leader renews and a follower tries (Elector.try_interval_s).
TRY_INTERVAL_S = LEASE_S / 4
ORCHESTRATOR_ARGS = ("--leader-lease-ms", str(LEASE_MS), "--repeat-interval-ms", "200")
SECOND = dt.timedelta(seconds=1)


class Lease(NamedTuple):
    """The row of the leader table."""

    holder: str
    pid: int
    elected_at: dt.datetime
    expires_at: dt.datetime


def start_orchestrators(
    daemons: DaemonFactory, count: int, *, log_format: str = "json", extra: Sequence[str] = ()
) -> list[Daemon]:
    """Start ``count`` orchestrators at once, then wait until each logged DaemonStarted."""
    started = [
        daemons.start(
            role="orchestrator",
            app=APP,
            name=f"o{i}",
            extra=[*ORCHESTRATOR_ARGS, "--log-format", log_format, *extra],
            wait_started=False,
        )
        for i in range(count)
    ]
    for orchestrator in started:
        orchestrator.wait_for_log("DaemonStarted")
    return started


def log_events(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    """The events named ``event`` in a daemon's JSON log (complete lines only), in order."""
    found = []
    for line in daemon.log().splitlines(keepends=True):
        if line.startswith("{") and line.endswith("\n"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def holder_pid(holder: str) -> int:
    """The pid in a lease holder ``host:pid:daemon_id:nonce``."""
    return int(holder.rsplit(":", 3)[1])


def lease(queue: Queue) -> Lease | None:
    """The leader lease row, if any."""
    rows = queue.rows("SELECT holder, elected_at, expires_at FROM {s}.leader")
    assert len(rows) <= 1, f"several leader rows: {rows}"
    if not rows:
        return None
    holder, elected_at, expires_at = rows[0]
    return Lease(holder, holder_pid(holder), elected_at, expires_at)


def wait_for_leader(queue: Queue, orchestrators: Sequence[Daemon]) -> tuple[Lease, Daemon]:
    """Wait until one of ``orchestrators`` holds a live lease and logged it; return both."""
    by_pid = {o.pid: o for o in orchestrators}

    def held() -> Lease | None:
        current = lease(queue)
        return current if current is not None and current.pid in by_pid else None

    current = wait_until(held, timeout=20, message="no orchestrator took the leader lease")
    assert isinstance(current, Lease)
    leader = by_pid[current.pid]
    leader.wait_for_log("OrchestratorLeadershipAcquired")
    return current, leader


#: Every job, unfinished or finished (a job is in exactly one of the two tables).
ALL_JOBS: LiteralString = (
    "(SELECT id, definition, tick_at, created_at FROM {s}.job"
    " UNION ALL SELECT id, definition, tick_at, created_at FROM {s}.job_history)"
)


def ticks(queue: Queue, definition: str) -> list[dt.datetime]:
    """The tick_at of every job of ``definition``, in order."""
    return [
        tick
        for (tick,) in queue.rows(
            "SELECT tick_at FROM " + ALL_JOBS + " j WHERE definition = %s ORDER BY tick_at",
            (definition,),
        )
    ]


def tick_jobs(queue: Queue) -> dict[tuple[str, dt.datetime], int]:
    """Every tick job as ``{(definition, tick_at): job id}``."""
    return {
        (definition, tick): job_id
        for definition, tick, job_id in queue.rows(
            "SELECT definition, tick_at, id FROM " + ALL_JOBS + " j WHERE tick_at IS NOT NULL"
        )
    }


def duplicate_ticks(queue: Queue) -> list[tuple[Any, ...]]:
    """The (definition, tick_at) pairs that have more than one job."""
    return queue.rows(
        "SELECT definition, tick_at, count(*) FROM " + ALL_JOBS + " j WHERE tick_at IS NOT NULL"
        " GROUP BY definition, tick_at HAVING count(*) > 1"
    )


def finished(queue: Queue, job_id: int) -> dict[str, Any] | None:
    """The history row of a finished job, as a dict (None while it is unfinished)."""
    rows = queue.rows(
        "SELECT status::text AS status, attempt, result, attempts, worker_id"
        " FROM {s}.job_history WHERE id = %s",
        (job_id,),
    )
    if not rows:
        return None
    status, attempt, result, attempts, worker_id = rows[0]
    return {
        "status": status,
        "attempt": attempt,
        "result": result,
        "attempts": [(a["attempt"], a["outcome"]) for a in attempts],
        "worker_id": worker_id,
    }


def missing_ticks(found: Sequence[dt.datetime], period_s: int) -> list[dt.datetime]:
    """The ticks of a ``period_s`` schedule between the first and last found that have no job."""
    assert found, "no tick at all"
    present = set(found)
    span = int((found[-1] - found[0]).total_seconds()) // period_s
    expected = (found[0] + i * period_s * SECOND for i in range(span + 1))
    return [tick for tick in expected if tick not in present]


def on_grid(tick: dt.datetime, period_s: int) -> bool:
    """True when ``tick`` is a whole multiple of ``period_s`` seconds since the epoch."""
    return tick.microsecond == 0 and int(tick.timestamp()) % period_s == 0


def scheduled(daemon: Daemon) -> dict[tuple[str, dt.datetime], int]:
    """The OrchestratorJobScheduled events of a daemon as ``{(definition, tick_at): job id}``."""
    result: dict[tuple[str, dt.datetime], int] = {}
    for record in log_events(daemon, "OrchestratorJobScheduled"):
        key = (str(record["definition"]), dt.datetime.fromisoformat(record["tick_at"]))
        assert key not in result, f"{daemon.pid} scheduled {key} twice"
        result[key] = int(record["job_id"])
    return result


def skipped(orchestrators: Iterable[Daemon], definition: str) -> set[dt.datetime]:
    """The ticks of ``definition`` that some orchestrator logged as skipped (overlap off)."""
    return {
        dt.datetime.fromisoformat(record["tick_at"])
        for orchestrator in orchestrators
        for record in log_events(orchestrator, "OrchestratorTickSkipped")
        if record["definition"] == definition
    }


def stop(daemon: Daemon) -> int:
    """SIGTERM the daemon and return its exit code."""
    daemon.send(signal.SIGTERM)
    return daemon.wait(timeout=20)


def test_three_orchestrators_schedule_each_tick_exactly_once(
    queue: Queue, daemons: DaemonFactory
) -> None:
    """Of three orchestrator processes one leads and enqueues every tick exactly once."""
    worker = daemons.start(app=APP, name="w", wait_started=False)
    orchestrators = start_orchestrators(daemons, 3)
    worker.wait_for_log("DaemonStarted")
    current, leader = wait_for_leader(queue, orchestrators)
    wait_until(
        lambda: len(ticks(queue, INTERVAL)) >= 8,
        timeout=30,
        message="the interval definition did not get 8 jobs",
    )

    rows = queue.rows("SELECT holder, expires_at > clock_timestamp() FROM {s}.leader")
    assert rows == [(current.holder, True)], "the lease moved or lapsed while nothing failed"
    followers = [o for o in orchestrators if o is not leader]
    for follower in followers:
        follower.send(signal.SIGTERM)
    assert [f.wait(timeout=20) for f in followers] == [0, 0]
    assert stop(leader) == 0
    assert lease(queue) is None, "the leader did not resign on SIGTERM"
    assert stop(worker) == 0

    assert duplicate_ticks(queue) == []
    interval = ticks(queue, INTERVAL)
    assert all(on_grid(tick, 1) for tick in interval), interval
    assert missing_ticks(interval, 1) == [], f"interval ticks were lost: {interval}"
    # The scheduler runs as soon as leadership is acquired, then on every tick. A
    # new definition's first tick is the first whole second at or after that first pass,
    # never one from before it was seen.
    assert interval[0] >= current.elected_at
    assert (interval[0] - current.elected_at).total_seconds() < 2.0
    lag = queue.value(
        "SELECT max(extract(epoch FROM created_at - tick_at)) FROM " + ALL_JOBS + " j"
        " WHERE definition = %s",
        (INTERVAL,),
    )
    assert 0 <= lag < 1.0, f"a tick's job was enqueued {lag} s late"

    cron = ticks(queue, CRON)
    assert len(cron) >= 2, cron
    assert all(on_grid(tick, CRON_PERIOD_S) for tick in cron), cron
    # With overlap off, a cron tick may only be missing if it was skipped (and logged).
    assert set(missing_ticks(cron, CRON_PERIOD_S)) <= skipped(orchestrators, CRON)

    # Exactly one orchestrator led, from start to stop, and it alone scheduled.
    acquired = {o.pid: len(log_events(o, "OrchestratorLeadershipAcquired")) for o in orchestrators}
    assert acquired == {o.pid: int(o is leader) for o in orchestrators}
    lost = {
        o.pid: [e["reason"] for e in log_events(o, "OrchestratorLeadershipLost")]
        for o in orchestrators
    }
    assert lost == {o.pid: ["stopped"] if o is leader else [] for o in orchestrators}
    assert [scheduled(f) for f in followers] == [{}, {}]
    assert scheduled(leader) == tick_jobs(queue)


def test_killed_leader_is_replaced_within_the_lease_and_ticks_continue(
    queue: Queue, daemons: DaemonFactory
) -> None:
    """A SIGKILLed leader is replaced within a lease plus a try; only gap ticks coalesce."""
    worker = daemons.start(app=APP, name="w", wait_started=False)
    orchestrators = start_orchestrators(daemons, 3)
    worker.wait_for_log("DaemonStarted")
    old, leader = wait_for_leader(queue, orchestrators)
    wait_until(lambda: len(ticks(queue, INTERVAL)) >= 3, timeout=20, message="no ticks")

    # Kill late in a second: the dead leader's lease then (normally) outlives the next tick
    # boundary, so that a tick falls into the gap and must coalesce.
    wait_until(
        lambda: (
            0.9 <= float(queue.value("SELECT mod(extract(epoch FROM clock_timestamp()), 1)")) < 0.97
        ),
        timeout=5,
        interval=0.005,
        message="the database clock never showed .90-.97 s",
    )
    leader.proc.kill()
    killed_at = time.monotonic()
    killed_db: dt.datetime = queue.value("SELECT clock_timestamp()")
    assert leader.wait(timeout=10) == -signal.SIGKILL
    last_old = [old]

    def taken_over() -> Lease | None:
        current = lease(queue)
        assert current is not None, "the killed leader's lease row disappeared"
        if current.holder == old.holder:
            last_old[0] = current  # a renewal in flight at the kill may still land
            return None
        return current

    new = wait_until(
        taken_over,
        timeout=LEASE_S + TRY_INTERVAL_S + 1.1,
        interval=0.02,
        message="no orchestrator took the lease over within ~3 s of the kill",
    )
    assert isinstance(new, Lease)
    assert elapsed_since(killed_at) < 3.0
    survivors = [o for o in orchestrators if o is not leader]
    assert new.pid in {o.pid for o in survivors}
    new_leader = next(o for o in survivors if o.pid == new.pid)
    follower = next(o for o in survivors if o is not new_leader)
    # Only an expired lease is ever taken: the two leaderships never overlap.
    assert new.elected_at >= last_old[0].expires_at, (new, last_old[0])

    wait_until(
        lambda: sum(tick > new.elected_at for tick in ticks(queue, INTERVAL)) >= 3,
        timeout=15,
        message="the new leader did not schedule 3 ticks",
    )
    assert stop(follower) == 0
    assert stop(new_leader) == 0
    assert stop(worker) == 0

    assert duplicate_ticks(queue) == []
    interval = ticks(queue, INTERVAL)
    assert all(on_grid(tick, 1) for tick in interval), interval
    # Ticks may only be missing in the gap: after the kill, before the new leader's first pass.
    gap_start = killed_db - SECOND
    gap_end = new.elected_at + dt.timedelta(milliseconds=500)
    missing = missing_ticks(interval, 1)
    assert all(gap_start < tick <= gap_end for tick in missing), (missing, gap_start, gap_end)
    assert len(missing) <= 3, missing
    # No back-fill: the seconds after the kill's and before the takeover's never get a job.
    killed_second = killed_db.replace(microsecond=0)
    takeover_second = int((new.elected_at - killed_second).total_seconds())
    coalesced = {killed_second + k * SECOND for k in range(1, takeover_second)}
    assert coalesced <= set(missing), f"back-filled: {missing=} {killed_db=} {new.elected_at=}"
    cron = ticks(queue, CRON)
    assert all(on_grid(tick, CRON_PERIOD_S) for tick in cron), cron
    cron_skipped = skipped(orchestrators, CRON)
    assert all(
        gap_start < tick <= gap_end or tick in cron_skipped
        for tick in missing_ticks(cron, CRON_PERIOD_S)
    ), (cron, cron_skipped)

    acquired = {o.pid: len(log_events(o, "OrchestratorLeadershipAcquired")) for o in orchestrators}
    assert acquired == {leader.pid: 1, new_leader.pid: 1, follower.pid: 0}
    assert log_events(leader, "OrchestratorLeadershipLost") == []  # SIGKILL: no goodbye
    assert [e["reason"] for e in log_events(new_leader, "OrchestratorLeadershipLost")] == [
        "stopped"
    ]
    assert log_events(follower, "OrchestratorLeadershipLost") == []
    # Each tick was scheduled by one orchestrator: the old leader before the kill, the new after.
    by_old, by_new = scheduled(leader), scheduled(new_leader)
    assert scheduled(follower) == {}
    assert by_old.keys().isdisjoint(by_new)
    assert all(tick <= killed_db for _, tick in by_old)
    assert all(tick > gap_start for _, tick in by_new)
    jobs = tick_jobs(queue)
    assert {key: jobs.get(key) for key in {**by_old, **by_new}} == {**by_old, **by_new}


def test_h_sigterm_leader_resigns_and_another_takes_over_at_once(
    queue: Queue, daemons: DaemonFactory
) -> None:
    """On SIGTERM the leader gives its lease up before exiting 0, so a follower leads at once."""
    orchestrators = start_orchestrators(daemons, 2, log_format="text")
    old, leader = wait_for_leader(queue, orchestrators)
    other = next(o for o in orchestrators if o is not leader)

    stopped_at = time.monotonic()
    assert stop(leader) == 0
    exited_at = time.monotonic()
    assert exited_at - stopped_at < 5, "the leader was slow to stop"
    current = lease(queue)
    assert current is None or current.holder != old.holder, "the stopped leader kept its lease"

    def other_leads() -> bool:
        current = lease(queue)
        return current is not None and current.pid == other.pid

    wait_until(other_leads, timeout=1.0, message="the follower did not take the lease within 1 s")
    assert elapsed_since(exited_at) < 1.0
    other.wait_for_log("OrchestratorLeadershipAcquired", timeout=5)
    log = leader.log()
    assert "OrchestratorLeadershipLost reason=stopped" in log
    assert "DaemonStopped error=None handed_back=0" in log
    assert queue.value("SELECT count(*) FROM {s}.worker WHERE pid = %s", (leader.pid,)) == 0

    assert stop(other) == 0
    assert "OrchestratorLeadershipLost reason=stopped" in other.log()
    assert lease(queue) is None
    assert queue.workers() == 0


def test_role_all_runs_its_own_repeat_and_cron_jobs(queue: Queue, daemons: DaemonFactory) -> None:
    """``--role all`` in one process schedules interval and cron jobs and runs them."""
    solo = daemons.start(role="all", app=APP, name="solo", concurrency=2)
    solo.wait_for_log("solo-orchestrator OrchestratorLeadershipAcquired")

    def succeeded() -> dict[str, int]:
        return dict(
            queue.rows(
                "SELECT definition, count(*) FROM {s}.job_history"
                " WHERE tick_at IS NOT NULL AND status = 'succeeded' GROUP BY definition"
            )
        )

    wait_until(
        lambda: succeeded().get(INTERVAL, 0) >= 3 and succeeded().get(CRON, 0) >= 1,
        timeout=20,
        message="the repeat jobs did not succeed",
    )
    assert stop(solo) == 0

    # The default --repeat-interval-ms is 30 s: the scheduler still wakes for every tick.
    interval = ticks(queue, INTERVAL)
    assert missing_ticks(interval, 1) == [], interval

    done = queue.rows(
        "SELECT id, definition, payload, max_attempts, result, attempt, attempts, worker_id"
        " FROM {s}.job_history WHERE tick_at IS NOT NULL AND status = 'succeeded' ORDER BY id"
    )
    assert {row[1] for row in done} == {INTERVAL, CRON}
    for job_id, _, payload, max_attempts, result, attempt, attempts, worker_id in done:
        assert (payload, max_attempts) == ({}, 1)
        assert result == {"job_id": job_id, "attempt": 1, "pid": solo.pid}
        assert queue.ledger(job_id) == [(1, solo.pid, True)]
        # The successful attempt is the history row itself; no earlier one failed.
        assert (attempt, attempts, worker_id is not None) == (1, [], True)
    assert duplicate_ticks(queue) == []
    log = solo.log()
    assert "solo-worker DaemonStarted" in log
    assert "solo-orchestrator OrchestratorJobScheduled" in log
    assert "solo-orchestrator OrchestratorLeadershipLost reason=stopped" in log
    assert lease(queue) is None
    assert queue.workers() == 0


def test_orchestrator_rescues_a_sigkilled_workers_job_for_another_worker(
    queue: Queue, jobs: Jobs, daemons: DaemonFactory
) -> None:
    """A running orchestrator rescues a SIGKILLed worker's job once its lease expires."""
    orchestrator = daemons.start(
        role="orchestrator",
        app=APP,
        name="o",
        extra=[*ORCHESTRATOR_ARGS, "--log-format", "json", "--rescue-interval-ms", "200"],
        wait_started=False,
    )
    worker_a = daemons.start(app=APP, name="a")
    orchestrator.wait_for_log("OrchestratorLeadershipAcquired")
    job_id = jobs["gated"].defer({"gate": "second-attempt"}).id
    wait_until(lambda: queue.ledger(job_id), message="worker A did not start the job")
    held = queue.job(job_id)
    assert (held["status"], held["attempt"]) == ("running", 1)
    a_worker_id = queue.value("SELECT id FROM {s}.worker WHERE pid = %s", (worker_a.pid,))
    assert held["locked_by"] == a_worker_id

    worker_a.proc.kill()
    assert worker_a.wait(timeout=10) == -signal.SIGKILL
    lease_end: dt.datetime = queue.job(job_id)["locked_until"]
    worker_b = daemons.start(app=APP, name="b", wait_started=False)

    wait_until(
        lambda: queue.attempts(job_id),
        timeout=15,
        message="the orchestrator did not rescue the job",
    )
    assert queue.attempts(job_id) == [(1, "lost")]
    finished_at, worker_id, error = queue.rows(
        "SELECT finished_at, worker_id, error FROM {s}.job_attempt WHERE job_id = %s", (job_id,)
    )[0]
    assert worker_id == a_worker_id
    assert "lease expired" in error
    # Never before the lease ended; soon after, at the 200 ms rescue interval (default 5 s).
    assert lease_end <= finished_at < lease_end + dt.timedelta(seconds=1.5), (
        lease_end,
        finished_at,
    )

    def rescued_events() -> list[dict[str, Any]]:
        return [
            e for e in log_events(orchestrator, "OrchestratorJobRescued") if e["job_id"] == job_id
        ]

    wait_until(rescued_events, timeout=5, message="no OrchestratorJobRescued in the log")
    [event] = rescued_events()
    assert (event["definition"], event["attempt"], event["reason"], event["locked_by"]) == (
        "gated",
        1,
        "lease_expired",
        a_worker_id,
    )

    worker_b.wait_for_log("DaemonStarted")
    b_worker_id = queue.value("SELECT id FROM {s}.worker WHERE pid = %s", (worker_b.pid,))
    wait_until(lambda: len(queue.ledger(job_id)) == 2, message="worker B did not retry the job")
    queue.open_gate("second-attempt")
    done = wait_until(lambda: finished(queue, job_id), message="the rescued job did not finish")
    assert done == {
        "status": "succeeded",
        "attempt": 2,
        "result": {"job_id": job_id, "attempt": 2, "pid": worker_b.pid},
        # The lost attempt's log row moved into the history; the success is the row itself.
        "attempts": [(1, "lost")],
        "worker_id": b_worker_id,
    }
    assert queue.ledger(job_id) == [(1, worker_a.pid, False), (2, worker_b.pid, True)]
    assert log_events(orchestrator, "OrchestratorJobFinalized") == []

    assert stop(worker_b) == 0
    assert stop(orchestrator) == 0
    assert queue.workers() == 1, "only the SIGKILLed worker's row should be left"
