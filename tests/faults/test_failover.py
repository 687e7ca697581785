"""The primary lost under load, its synchronous standby promoted: nothing acknowledged is lost.

The case runs on a primary with a synchronous streaming standby
(:mod:`tests.faults._replication`; the shared server is never touched), and
every client, the daemons and the producer, uses the pair's multi-host
connection string with ``target_session_attrs=read-write``: this module's
``test_dsn`` is that string, so the usual fixtures (``config``, ``ledger``,
``daemons``...) migrate and serve a schema on whichever node is the primary.

Two workers with concurrency and two orchestrators (both carrying the ledger
app's repeat ``tick``, enqueued every second) run as ``orchestra daemon``
processes, and a producer thread defers jobs all along, some of them long
enough to be running at the failover. Then the primary is stopped as a crash
would stop it (``pg_ctl stop -m immediate``) and the standby promoted at once
(the test plays the failover manager, so the measured time leaves out the
manager's detection). The daemons are never restarted: each must find the new
primary through the connection string on its own, after database errors it
reports and retries with bounded pauses. The full run fails over several
times, back and forth, rebuilding the stopped node as the new primary's
standby in between.

Afterwards, on the new primary:

* every job whose ``defer`` returned ran to success, and its result is read
  back through ``JobHandle.result``; no success is recorded twice, no tick is
  enqueued twice or closer than its interval;
* every daemon reported the outage (``DaemonDatabaseError``, each pause at
  most the documented cap) and worked again afterwards without a restart;
  every worker listens again; every daemon still runs and stops cleanly on
  SIGTERM.

Each failover prints the time from the stop of the primary to the first job
finished on the new one; the report line carries the largest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import random
from collections.abc import Iterator
from typing import Any

import attrs
import psycopg
import pytest

from orchestra import Config, JobDefinition, JobHandle
from orchestra._worker._retry import ERROR_BACKOFF_MAX_S
from orchestra.testing import wait_until
from tests.e2e._support import Daemon, DaemonFactory, Queue
from tests.faults._cluster import ClusterUnavailableError
from tests.faults._invariants import (
    Snapshot,
    doubled_ticks,
    events,
    snapshot,
    success_events,
    tick_count,
    unfinished,
)
from tests.faults._ledger import TICK_INTERVAL_MS
from tests.faults._replication import ReplicatedPair, replicated_pair
from tests.faults._report import Report, Scale
from tests.faults._support import (
    basic_checks,
    conclude,
    logs,
    settle,
    start_orchestrator,
    start_worker,
)
from tests.faults.test_postgres_restart import (
    LONG_JOB_MS,
    Producer,
    assert_alive,
    explained,
    listening_again,
    producing,
    stop_gracefully,
)

TICK = "tick"
WORKERS = 2
ORCHESTRATORS = 2
CONCURRENCY = 8
#: Jobs that succeed on a primary before it is stopped: drawn anew for each
#: failover, so that the stops land at varied moments (short run, full run).
SUCCESSES_BETWEEN = ((20, 80), (50, 250))
#: Deadlines bound the waits on a shared, slow machine; they assert no speed.
RECOVERY_TIMEOUT_S = 90.0


def failovers_for(scale: Scale) -> int:
    """One failover in the short run; several, back and forth, in the full one."""
    return scale.pick(1, 6)


@pytest.fixture
def pair() -> Iterator[ReplicatedPair]:
    """A primary and its synchronous standby, skipped with the reason when they cannot run."""
    with contextlib.ExitStack() as stack:
        try:
            started = stack.enter_context(replicated_pair())
        except ClusterUnavailableError as exc:
            pytest.skip(str(exc))
        yield started


@pytest.fixture
def test_dsn(pair: ReplicatedPair) -> str:
    """This module's cases run on the pair, through its multi-host connection string."""
    return pair.dsn


def rows(pair: ReplicatedPair, schema: str, query: Any, params: Any = ()) -> list[Any]:
    """The rows of ``query`` ({s} is the schema) on the current primary, on a fresh connection."""
    with psycopg.connect(pair.dsn, autocommit=True, connect_timeout=5) as conn:
        return Queue(conn, schema).rows(query, params)


def succeeded_since(
    pair: ReplicatedPair, schema: str, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """How many jobs succeeded after ``since``, and when the first of them did."""
    ((count, first),) = rows(
        pair,
        schema,
        "SELECT count(*), min(finalized_at) FROM {s}.all_jobs"
        " WHERE status = 'succeeded' AND finalized_at > %s",
        (since,),
    )
    return int(count), first


def succeeded_at_least(pair: ReplicatedPair, schema: str, since: dt.datetime, count: int) -> bool:
    """Whether ``count`` jobs succeeded after ``since``."""
    return succeeded_since(pair, schema, since)[0] >= count


def long_jobs_running(pair: ReplicatedPair, schema: str) -> list[int]:
    """The long jobs running right now: the ones a failover lands on."""
    return [
        int(job_id)
        for (job_id,) in rows(
            pair,
            schema,
            "SELECT id FROM {s}.job WHERE status = 'running'"
            " AND (payload->>'sleep_ms')::integer = %s",
            (LONG_JOB_MS,),
        )
    ]


def all_finished(pair: ReplicatedPair, schema: str) -> bool:
    """No job of the schema is waiting, available or running."""
    ((count,),) = rows(
        pair,
        schema,
        "SELECT count(*) FROM {s}.job WHERE status IN ('waiting', 'available', 'running')",
    )
    return int(count) == 0


def now() -> dt.datetime:
    """This machine's clock, which is also the servers' (they run here)."""
    return dt.datetime.now(dt.UTC)


@attrs.frozen
class Failover:
    """What one failover took."""

    #: When the primary was stopped.
    began: dt.datetime
    #: When the promoted standby accepted writes.
    promoted: dt.datetime
    #: When jobs and ticks were seen flowing again on the new primary.
    flowing: dt.datetime
    #: Seconds from the stop of the primary until the standby accepted writes.
    to_writable_s: float
    #: Seconds from the stop of the primary until the first job finished on the new one.
    to_first_job_s: float
    #: Long jobs running when the primary was stopped.
    running: int


def fail_over(
    pair: ReplicatedPair,
    schema: str,
    daemons: DaemonFactory,
    number: int,
    successes: int,
) -> Failover:
    """Stop the primary while long jobs run, promote the standby, wait for jobs and ticks."""
    running = wait_until(
        lambda: long_jobs_running(pair, schema),
        timeout=RECOVERY_TIMEOUT_S,
        interval=0.01,
        message=f"no long job running before failover {number}:\n{daemons.logs()}",
    )
    old, new = pair.primary.name, pair.standby.name
    began = now()
    pair.stop_primary()
    stopped = now()  # the old primary is gone: what finishes from now on, finishes on the new one
    pair.promote()
    promoted = now()
    what = f"failover {number} ({old} stopped, {new} promoted)"

    def flowing() -> dt.datetime | None:
        assert_alive(daemons, f"after {what}")
        count, first = succeeded_since(pair, schema, stopped)
        return first if count >= successes else None

    first = wait_until(
        flowing,
        timeout=RECOVERY_TIMEOUT_S,
        interval=0.05,
        message=f"jobs did not flow again after {what}:\n{daemons.logs()}",
    )
    # The orchestrators are back too: a tick after the promotion was scheduled and ran.
    wait_until(
        lambda: rows(
            pair,
            schema,
            "SELECT 1 FROM {s}.all_jobs WHERE definition = %s AND tick_at > %s"
            " AND status = 'succeeded' LIMIT 1",
            (TICK, promoted),
        ),
        timeout=RECOVERY_TIMEOUT_S,
        interval=0.1,
        message=f"no tick ran after {what}:\n{daemons.logs()}",
    )
    to_writable = (promoted - began).total_seconds()
    to_first_job = (first - began).total_seconds()
    print(
        f"{what}: {len(running)} long job(s) running at the stop; the new primary took writes "
        f"{to_writable:.2f} s after the stop, and finished its first job "
        f"{to_first_job:.2f} s after the stop"
    )
    return Failover(began, promoted, now(), to_writable, to_first_job, len(running))


def outage_reports(daemon: Daemon, failovers: list[Failover], cap_ms: int) -> list[str]:
    """What is wrong with how ``daemon`` reported the outages (nothing: an empty list).

    It reported each failover with ``DaemonDatabaseError`` events, logged
    between the stop of the primary and the jobs flowing again (every daemon
    runs a statement at least every second, on a connection the stop killed),
    each pause before a retry at most ``cap_ms``.
    """
    errors = events([daemon.log()], "DaemonDatabaseError")
    who = f"{daemon.log_path.name} (pid {daemon.pid})"
    logged = [dt.datetime.fromisoformat(record["time"]) for record in errors]
    problems = [
        f"{who} logged no DaemonDatabaseError during failover {number}"
        for number, failover in enumerate(failovers, start=1)
        if not any(failover.began <= at <= failover.flowing for at in logged)
    ]
    problems += [
        f"{who} would wait {record['retry_in_ms']} ms before a retry (cap {cap_ms} ms)"
        for record in errors
        if int(record["retry_in_ms"]) > cap_ms
    ]
    return problems


def refreshed_since(pair: ReplicatedPair, schema: str, since: dt.datetime) -> set[int]:
    """The pids of the daemons whose row in the worker table was refreshed after ``since``.

    Workers refresh theirs with their heartbeat, orchestrators with each
    election: a refresh after the last promotion is a statement committed on
    the new primary, by a daemon that was never restarted.
    """
    return {
        int(pid)
        for (pid,) in rows(
            pair, schema, "SELECT pid FROM {s}.worker WHERE heartbeat_at > %s", (since,)
        )
    }


def read_results(config: Config, job_ids: list[int]) -> list[str]:
    """Each job's result, read back through its handle on the new primary, names its job."""
    problems = []
    for job_id in job_ids:
        try:
            result = JobHandle(job_id, config).result(timeout=RECOVERY_TIMEOUT_S)
        except Exception as exc:
            problems.append(f"job {job_id}: its result cannot be read: {exc}")
            continue
        if not isinstance(result, dict) or result.get("job_id") != job_id:
            problems.append(f"job {job_id}: its result is {result!r}")
    return problems


def test_daemons_follow_a_failover_to_the_promoted_standby_and_no_acknowledged_job_is_lost(
    pair: ReplicatedPair,
    config: Config,
    ledger: str,
    fault_jobs: dict[str, JobDefinition[Any]],
    daemons: DaemonFactory,
    scale: Scale,
    report: Report,
) -> None:
    schema = ledger
    rng = random.Random("failover")
    failovers = failovers_for(scale)
    orchestrators = [
        start_orchestrator(daemons, name=f"orch{index}", ticks=True)
        for index in range(ORCHESTRATORS)
    ]
    workers = [
        start_worker(daemons, name=f"w{index}", concurrency=CONCURRENCY, ticks=True)
        for index in range(WORKERS)
    ]
    producer = Producer(fault_jobs["retried"], rng)
    between = scale.pick(*SUCCESSES_BETWEEN)
    done: list[Failover] = []
    with producing(producer):
        for number in range(1, failovers + 1):
            # Jobs flow on this primary, with its standby in sync, before it is stopped.
            wait_until(
                functools.partial(succeeded_at_least, pair, schema, now(), between[0]),
                timeout=RECOVERY_TIMEOUT_S,
                interval=0.1,
                message=f"no load before failover {number}:\n{daemons.logs()}",
            )
            successes = rng.randint(*between)
            done.append(fail_over(pair, schema, daemons, number, successes))
            if number < failovers:
                pair.rejoin()  # the stopped node, rebuilt as the new primary's standby
    committed = producer.committed()
    drain_s = scale.pick(90, 600)

    with psycopg.connect(pair.dsn, autocommit=True) as conn:
        settled = settle(conn, schema, committed, timeout=drain_s)
    assert_alive(daemons, "after the failovers")
    # Jobs of a claim whose reply the failover swallowed come back through the
    # orchestrators: wait with them running until nothing is left over.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: all_finished(pair, schema), timeout=drain_s, interval=0.2)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: all(listening_again(w) for w in workers), timeout=30, interval=0.2)
    deaf = [w.pid for w in workers if not listening_again(w)]
    pids = {daemon.pid for daemon in daemons.daemons}
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: pids <= refreshed_since(pair, schema, done[-1].promoted),
            timeout=30,
            interval=0.2,
        )
    silent = sorted(pids - refreshed_since(pair, schema, done[-1].promoted))
    cap_ms = round(ERROR_BACKOFF_MAX_S * 1000)
    outage = [line for daemon in daemons.daemons for line in outage_reports(daemon, done, cap_ms)]
    exits = {f"orchestrator {o.pid}": stop_gracefully(o) for o in orchestrators}
    # The last tick's job may have been scheduled just before the stops.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: all_finished(pair, schema), timeout=drain_s, interval=0.2)
    exits.update({f"worker {w.pid}": stop_gracefully(w) for w in workers})
    results = read_results(config, committed)

    with psycopg.connect(pair.dsn, autocommit=True) as conn:
        on = conn.execute("SELECT inet_server_port()").fetchone()
        snap: Snapshot = snapshot(conn, schema)
    tick = dt.timedelta(milliseconds=TICK_INTERVAL_MS)
    to_writable = max(f.to_writable_s for f in done)
    to_first_job = max(f.to_first_job_s for f in done)
    with explained(snap, daemons):
        conclude(
            report,
            snap,
            case="failover",
            job_ids=committed,
            faults=failovers,
            note=(
                f"failover_to_first_job_s={to_first_job:.2f} promote_s={to_writable:.2f} "
                f"long_jobs_at_stop={sum(f.running for f in done)} "
                f"defer_retries={producer.raised} ticks={tick_count(snap, TICK)} "
                f"pg={pair.primary.binaries.source}"
            ),
            violations={
                **basic_checks(snap, committed),
                "settled": [] if settled else ["committed jobs still unfinished at the deadline"],
                "unfinished": unfinished(snap),
                "doubled ticks": doubled_ticks(snap, TICK, tick),
                "success events": success_events(snap, logs(daemons), complete=False),
                "results": results,
                "outage": outage,
                "silent on the new primary": [f"daemon {pid}" for pid in silent],
                "not listening again": [f"worker {pid}" for pid in deaf],
                "unclean exits": [
                    f"{who} exited with {code}" for who, code in exits.items() if code
                ],
                "not on the new primary": []
                if on == (pair.primary.port,)
                else [f"read from port {on}, the primary is on {pair.primary.port}"],
            },
        )
