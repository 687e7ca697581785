"""A fleet behind one PgBouncer in transaction pooling mode, next to the same work direct.

Twenty ``orchestra daemon --role worker`` processes and two orchestrators run
the ledger app through a PgBouncer (:mod:`tests._pgbouncer`: ``pool_mode =
transaction``, five server connections) with ``ORCHESTRA_TRANSACTION_POOLING=1``
and LISTEN on the direct DSN (``ORCHESTRA_LISTEN_DSN``); four producer
processes (:mod:`tests.faults._producer`) defer 20,000 jobs through it in
batches, every tenth failing its first attempt. Meanwhile a rate-limited and a
concurrency-capped definition run, the orchestrators enqueue a tick every
second, and the test waits on results through PgBouncer both with LISTEN
(direct) and by polling. Then the ledger's invariants: every job ran and
succeeded once, no tick enqueued twice, the rate limit and the cap held,
one success event per job.

The same mix then runs smaller (three workers, an eighth of the jobs) through
PgBouncer and with a direct connection: twenty direct workers, each with a
ledger connection per job slot, would need more server connections than a
shared test server has. The report line gives the three throughputs, in jobs
per second from the first claim to the last finish.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql

from orchestra import Config, JobDefinition, JobHandle
from tests._pgbouncer import PgBouncer
from tests.e2e._support import REPO, Daemon, DaemonFactory
from tests.faults._invariants import (
    Snapshot,
    concurrency_exceeded,
    doubled_ticks,
    events,
    rate_limit_broken,
    snapshot,
    success_events,
    tick_count,
)
from tests.faults._ledger import (
    MAX_CONCURRENCY,
    RELEASE_INTERVAL_MS,
    TICK_INTERVAL_MS,
    create_tables,
    define,
)
from tests.faults._report import Report, Scale
from tests.faults._support import (
    basic_checks,
    conclude,
    settle,
    start_orchestrator,
    start_worker,
)

#: Worker processes behind PgBouncer, each with this many job slots.
WORKERS = 20
CONCURRENCY = 8
ORCHESTRATORS = 2
#: Producer processes, and the jobs each defers per statement.
PRODUCERS = 4
BATCH = 500
#: Every this many jobs, one fails its first attempt on purpose.
FAIL_EVERY = 10
#: Jobs of the rate-limited and of the capped definition (deferred by the test).
LIMITED_JOBS = 20
CAPPED_JOBS = 30
CAPPED_SLEEP_MS = 20
#: Result waits through PgBouncer of each kind (LISTEN direct, polling), and how
#: often a polling one reads the job's row.
RESULT_WAITS = 2
POLL_INTERVAL_S = 0.2
#: Workers of the small runs (through PgBouncer and direct), and their share of the jobs.
SMALL_WORKERS = 3
SMALL_SHARE = 8
#: Ticks that must have been enqueued during a run (one per second).
MIN_TICKS = 2
#: Seconds a whole run may take to drain (a loaded 2-core machine is slow).
DRAIN_TIMEOUT_S = 600
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60


@attrs.frozen
class Fleet:
    """The shape of one run."""

    name: str
    workers: int
    jobs: int
    #: The daemons' and producers' environment (DSN, schema, pooling).
    env: dict[str, str]


@attrs.frozen
class Outcome:
    """What one run did: its snapshot, its jobs, its throughput."""

    snap: Snapshot
    job_ids: list[int]
    produced: int
    #: Jobs per second of the producers' jobs, from the first claim to the last finish.
    rate: float
    span_s: float
    violations: dict[str, list[str]]
    note: str


def _fleet_env(
    base: dict[str, str], schema: str, dsn: str, listen_dsn: str | None
) -> dict[str, str]:
    env = {
        k: v
        for k, v in base.items()
        if k not in ("ORCHESTRA_TRANSACTION_POOLING", "ORCHESTRA_LISTEN_DSN")
    }
    env.update(ORCHESTRA_TEST_DSN=dsn, E2E_SCHEMA=schema)
    if listen_dsn is not None:
        env.update(ORCHESTRA_TRANSACTION_POOLING="1", ORCHESTRA_LISTEN_DSN=listen_dsn)
    return env


def _unlog_ledger(db: psycopg.Connection[Any], schema: str) -> None:
    """Make the ledger table unlogged: its writes then wait for no WAL flush.

    Two ledger writes per job, each its own commit, would otherwise take most
    of the server's time flushing WAL, and the throughput measured would be the
    ledger's. No server crashes in this case, so its rows need no durability.
    """
    db.execute(sql.SQL("ALTER TABLE {}.fault_ledger SET UNLOGGED").format(sql.Identifier(schema)))


def _ids(db: psycopg.Connection[Any], schema: str, definition: str) -> list[int]:
    query = sql.SQL("SELECT id FROM {}.all_jobs WHERE definition = %s ORDER BY id").format(
        sql.Identifier(schema)
    )
    return [int(row[0]) for row in db.execute(query, (definition,)).fetchall()]


def _produce(env: dict[str, str], jobs: int, out_dir: Path) -> list[subprocess.Popen[bytes]]:
    """Start the producer processes; each writes its ids to ``out_dir/producer-N.ids``."""
    share = jobs // PRODUCERS
    started = []
    for n in range(PRODUCERS):
        count = share if n < PRODUCERS - 1 else jobs - share * (PRODUCERS - 1)
        with (
            (out_dir / f"producer-{n}.ids").open("wb") as out,
            (out_dir / f"producer-{n}.log").open("wb") as err,
        ):
            started.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "tests.faults._producer", "retried", str(count),
                        "--batch", str(BATCH), "--fail-every", str(FAIL_EVERY),
                    ],
                    cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                )
            )  # fmt: skip
    return started


def _produced_ids(producers: Sequence[subprocess.Popen[bytes]], out_dir: Path) -> list[list[int]]:
    """Wait for the producers; the ids each deferred."""
    found = []
    for n, producer in enumerate(producers):
        code = producer.wait(timeout=DRAIN_TIMEOUT_S)
        log = (out_dir / f"producer-{n}.log").read_text("utf-8", errors="replace")
        assert code == 0, f"producer {n} exited with {code}:\n{log[-4000:]}"
        found.append([int(line) for line in (out_dir / f"producer-{n}.ids").read_text().split()])
    return found


def _stop(daemons: Sequence[Daemon]) -> None:
    for daemon in daemons:
        daemon.send(signal.SIGTERM)
    for daemon in daemons:
        daemon.wait(timeout=STOP_TIMEOUT_S)


def _throughput(snap: Snapshot, job_ids: Sequence[int]) -> tuple[float, float]:
    """(jobs/s, seconds) of ``job_ids`` from their first claim to their last finish."""
    wanted = set(job_ids)
    ended = [a for a in snap.attempts if a.job_id in wanted]
    if not ended:
        return 0.0, 0.0
    span = (max(a.finished_at for a in ended) - min(a.started_at for a in ended)).total_seconds()
    return (len(wanted) / span if span > 0 else 0.0), span


def _run(
    fleet: Fleet,
    daemons: DaemonFactory,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
    out_dir: Path,
    *,
    waits: Sequence[tuple[str, Config]] = (),
) -> Outcome:
    """Start the fleet, defer and run the jobs, wait on results, stop; check the invariants."""
    schema = fleet.env["E2E_SCHEMA"]
    _unlog_ledger(db, schema)
    daemons.env = fleet.env
    out_dir.mkdir()
    orchestrators = [
        start_orchestrator(daemons, name=f"{fleet.name}-o{i}", ticks=True, wait_started=False)
        for i in range(ORCHESTRATORS)
    ]
    workers = [
        start_worker(
            daemons,
            name=f"{fleet.name}-w{i}",
            concurrency=CONCURRENCY,
            ticks=True,
            wait_started=False,
        )
        for i in range(fleet.workers)
    ]
    for daemon in [*orchestrators, *workers]:
        daemon.wait_for_log("DaemonStarted", timeout=START_TIMEOUT_S)

    limited = [h.id for h in definitions["limited"].defer_many([{}] * LIMITED_JOBS)]
    capped = [
        h.id
        for h in definitions["capped"].defer_many([{"sleep_ms": CAPPED_SLEEP_MS}] * CAPPED_JOBS)
    ]
    producers = _produce(fleet.env, fleet.jobs, out_dir)
    batches = _produced_ids(producers, out_dir)
    produced = [job_id for batch in batches for job_id in batch]
    assert len(set(produced)) == fleet.jobs

    # Wait on the last job of some producers (the queue is still long behind
    # them), each wait in a thread of its own: LISTEN (the Config's usual
    # re-read every second in case a notification is lost), or polling.
    wrong: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(waits))) as pool:
        futures = {}
        for n, (kind, config) in enumerate(waits):
            job_id = batches[n % PRODUCERS][-1]
            poll_s = POLL_INTERVAL_S if kind == "poll" else 1.0
            handle = JobHandle(job_id, config)
            wait = pool.submit(handle.result, timeout=DRAIN_TIMEOUT_S, poll_interval_s=poll_s)
            futures[wait] = (kind, job_id)
        for wait in concurrent.futures.as_completed(futures):
            kind, job_id = futures[wait]
            try:
                value = wait.result()
            except Exception as exc:
                wrong.append(f"result() ({kind}) of job {job_id} raised {exc!r}")
                continue
            if not isinstance(value, dict) or value.get("job_id") != job_id:
                wrong.append(f"result() ({kind}) of job {job_id} returned {value!r}")

    job_ids = [*produced, *limited, *capped]
    settled = settle(db, schema, job_ids, timeout=DRAIN_TIMEOUT_S)
    _stop(orchestrators)  # no more ticks: every tick job can finish
    ticks = _ids(db, schema, "tick")
    ticks_settled = settle(db, schema, ticks, timeout=STOP_TIMEOUT_S)
    _stop(workers)
    snap = snapshot(db, schema)
    rate, span = _throughput(snap, produced)
    violations = {
        **basic_checks(snap, [*job_ids, *ticks]),
        "settled": [] if settled else ["jobs still unfinished at the deadline"],
        "ticks settled": [] if ticks_settled else ["tick jobs still unfinished"],
        "ticks": doubled_ticks(snap, "tick", dt.timedelta(milliseconds=TICK_INTERVAL_MS)),
        "ticks enqueued": []
        if tick_count(snap, "tick") >= MIN_TICKS
        else [f"{tick_count(snap, 'tick')} ticks enqueued, fewer than {MIN_TICKS}"],
        "rate limit": rate_limit_broken(
            snap, "limited", dt.timedelta(milliseconds=RELEASE_INTERVAL_MS)
        ),
        "concurrency cap": concurrency_exceeded(snap, "capped", MAX_CONCURRENCY),
        "success events": success_events(
            snap, [d.log() for d in [*orchestrators, *workers]], complete=True
        ),
        "results": wrong,
    }
    leaderships = len(events([d.log() for d in orchestrators], "OrchestratorLeadershipAcquired"))
    note = (
        f"{fleet.workers} workers x {CONCURRENCY}, {rate:.0f} jobs/s over {span:.1f} s,"
        f" ticks={tick_count(snap, 'tick')} leaderships={leaderships}"
    )
    return Outcome(snap, [*job_ids, *ticks], len(produced), rate, span, violations, note)


@contextlib.contextmanager
def _another_schema(
    db: psycopg.Connection[Any], test_dsn: str, dsn: str, schema: str
) -> Iterator[Config]:
    """One more migrated schema with the ledger table, and a Config on ``dsn`` for it; dropped."""
    config = Config(dsn, schema=schema, transaction_pooling=dsn != test_dsn)
    try:
        with Config(test_dsn, schema=schema) as direct:
            direct.prepare_schema()
        create_tables(db, schema)
        yield config
    finally:
        config.close()
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.timeout(900)
def test_a_fleet_behind_pgbouncer_in_transaction_pooling_loses_and_doubles_nothing(
    ledger: str,
    pgbouncer: PgBouncer,
    pgbouncer_config: Config,
    daemons: DaemonFactory,
    db: psycopg.Connection[Any],
    test_dsn: str,
    tmp_path: Path,
    scale: Scale,
    report: Report,
) -> None:
    """20 workers, 2 orchestrators, 4 producers through PgBouncer: every invariant holds."""
    jobs = scale.pick(20_000, 50_000)
    small = jobs // SMALL_SHARE
    polling = Config(pgbouncer.dsn, schema=ledger, transaction_pooling=True)
    assert polling.listen_dsn is None and pgbouncer_config.listen_dsn == test_dsn
    waits = [("listen", pgbouncer_config)] * RESULT_WAITS + [("poll", polling)] * RESULT_WAITS
    try:
        fleet = Fleet(
            "pgbouncer", WORKERS, jobs, _fleet_env(daemons.env, ledger, pgbouncer.dsn, test_dsn)
        )
        through = _run(
            fleet, daemons, db, define(pgbouncer_config), tmp_path / fleet.name, waits=waits
        )
    finally:
        polling.close()
    xacts = sum(int(row["total_xact_count"]) for row in pgbouncer.admin("SHOW STATS"))

    # The small shape through PgBouncer, then direct: the same work both ways.
    outcomes: dict[str, Outcome] = {}
    for name, dsn in (("pgbouncer-small", pgbouncer.dsn), ("direct-small", test_dsn)):
        schema = f"{ledger}_{name.split('-')[0]}"
        with _another_schema(db, test_dsn, dsn, schema) as config:
            listen_dsn = test_dsn if dsn != test_dsn else None
            env = _fleet_env(daemons.env, schema, dsn, listen_dsn)
            fleet = Fleet(name, SMALL_WORKERS, small, env)
            outcomes[name] = _run(fleet, daemons, db, define(config), tmp_path / name)

    pooled_small, direct_small = outcomes["pgbouncer-small"], outcomes["direct-small"]
    line = (
        f"pgbouncer {pgbouncer.version} (transaction pooling, {pgbouncer.pool_size} server"
        f" connections, {xacts} transactions): {through.note}; {small} jobs on"
        f" {SMALL_WORKERS} workers: {pooled_small.rate:.0f} jobs/s through pgbouncer,"
        f" {direct_small.rate:.0f} jobs/s direct"
    )
    # Every line is recorded before any violation fails the test.
    for name, outcome in outcomes.items():
        conclude(
            report,
            outcome.snap,
            case=f"{name}-fleet",
            job_ids=outcome.job_ids,
            faults=0,
            violations={},
            note=outcome.note,
        )
    conclude(
        report,
        through.snap,
        case="pgbouncer-fleet",
        job_ids=through.job_ids,
        faults=0,
        violations={
            # The ledger's two writes per job alone are that many: the fleet went through it.
            "transactions through pgbouncer": []
            if xacts >= jobs
            else [f"{xacts} transactions through pgbouncer for {jobs} jobs"],
            **{
                f"{name}: {kind}": lines
                for name, outcome in (("pgbouncer", through), *outcomes.items())
                for kind, lines in outcome.violations.items()
            },
        },
        note=line,
    )
