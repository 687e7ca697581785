"""PostgreSQL restarted under load: the daemons reconnect on their own, nothing is lost or doubled.

Each case runs on a private cluster (:mod:`tests.faults._cluster`; the shared
server is never touched): this module's ``test_dsn`` is that cluster's, so the
usual fixtures (``config``, ``ledger``, ``daemons``...) migrate and serve a
schema there. Two workers with concurrency and an orchestrator (which ticks the
ledger app's repeat job every second) run as ``orchestra daemon`` processes,
and a producer thread defers jobs all along, some of them long enough to be
running when the server goes away. Then the cluster is restarted with
``pg_ctl restart``: ``-m fast`` (clients cut off, clean shutdown) or ``-m
immediate`` (a crash: WAL recovery at the start), again after the jobs flow
again. The daemons are never restarted: they must reconnect on their own.

Afterwards (:mod:`tests.faults._invariants`):

* every job whose ``defer`` returned ends succeeded; a ``defer`` that raised
  during the outage may or may not have committed, so the producer tries
  again and only what returned counts as committed;
* no success is recorded twice, no tick is enqueued twice;
* nothing is left unfinished, every daemon still runs, every worker listens
  again, and each stops cleanly on SIGTERM.

Each restart prints how long the server was away and how long after the
restart began the first job finished; the report line carries the largest.

Next to the load cases: a crash must not make the database forget a claim
whose job its worker already runs (the job would run twice at once), and the
private cluster itself keeps committed rows across crashes, runs on Debian's
binaries or on those of the ``pgserver`` package, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition
from orchestra.testing import wait_until
from tests.e2e._support import Daemon, DaemonFactory, Queue
from tests.faults import _cluster as cluster_module
from tests.faults import _restart_app as restart_app
from tests.faults._cluster import (
    BinarySource,
    ClusterUnavailableError,
    PrivateCluster,
    StopMode,
    private_cluster,
)
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
from tests.faults._report import Report, Scale
from tests.faults._support import (
    basic_checks,
    conclude,
    logs,
    settle,
    start_orchestrator,
    start_worker,
)

#: The shared server's port, which a private cluster must never use.
SHARED_PORT = 5432
#: The app of the claim-durability case.
HELD_APP = "tests.faults._restart_app:app"
#: The ledger app's repeat definition.
TICK = "tick"
WORKERS = 2
CONCURRENCY = 8
#: Pause between two defers of the producer: a steady stream within the workers' pace.
PRODUCER_PAUSE_S = 0.01
#: Share of the deferred jobs that work long enough to span a restart.
LONG_SHARE = 0.2
SHORT_JOB_MS = 5
LONG_JOB_MS = 300
#: Jobs that succeed after a restart before the next one (the load is back),
#: drawn anew for each restart so that restarts land at varied moments: in
#: the short run, and in the full one.
SUCCESSES_BETWEEN = ((20, 80), (50, 250))
#: Deadlines bound the waits on a shared, slow machine; they assert no speed.
RECOVERY_TIMEOUT_S = 90.0
#: How many of the jobs a failure names are explained (rows and log lines).
SHOWN_JOBS = 5


def restarts_for(mode: StopMode, scale: Scale) -> int:
    """Several restarts in the full run; one (fast) or two (crash) in the short one."""
    return scale.pick(1 if mode == "fast" else 2, 12)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster, skipped with the reason when it cannot be started."""
    with contextlib.ExitStack() as stack:
        try:
            started = stack.enter_context(private_cluster())
        except ClusterUnavailableError as exc:
            pytest.skip(str(exc))
        yield started


@pytest.fixture
def test_dsn(cluster: PrivateCluster) -> str:
    """This module's cases run on their private cluster, never on the shared server."""
    return cluster.dsn


class Producer:
    """A thread deferring jobs until stopped; only the defers that returned count.

    A defer that raises (the server is away) is tried again with the same
    payload until it returns. The one that raised may have committed before
    its reply was lost, so a job of it may exist twice: neither counts as
    committed unless its defer returned.
    """

    def __init__(self, definition: JobDefinition[Any], rng: random.Random) -> None:
        self.definition = definition
        self.rng = rng
        self.raised = 0
        self._committed: list[int] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="faults-producer", daemon=True)

    def start(self) -> None:
        """Start deferring."""
        self._thread.start()

    def stop(self) -> None:
        """Stop deferring and wait for the thread (idempotent)."""
        self._stop.set()
        if self._thread.ident is None:
            return  # never started
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the producer thread did not stop"

    def committed(self) -> list[int]:
        """The ids of the jobs whose defer returned so far."""
        with self._lock:
            return list(self._committed)

    def _run(self) -> None:
        while not self._stop.is_set():
            long = self.rng.random() < LONG_SHARE
            payload = {"sleep_ms": LONG_JOB_MS if long else SHORT_JOB_MS}
            while not self._stop.is_set():
                try:
                    handle = self.definition.defer(payload)
                except Exception:
                    # The server is away (or a pooled connection died with
                    # it): the same payload again, after a short pause.
                    self.raised += 1
                    self._stop.wait(0.05)
                    continue
                with self._lock:
                    self._committed.append(handle.id)
                break
            self._stop.wait(PRODUCER_PAUSE_S)


def connect(cluster: PrivateCluster) -> psycopg.Connection[Any]:
    """A fresh autocommit connection: a restart breaks the older ones."""
    return psycopg.connect(cluster.dsn, autocommit=True, connect_timeout=5)


def rows(cluster: PrivateCluster, schema: str, query: Any, params: Any = ()) -> list[Any]:
    """The rows of ``query`` ({s} is the schema), on a fresh connection."""
    with connect(cluster) as conn:
        return Queue(conn, schema).rows(query, params)


def succeeded_since(
    cluster: PrivateCluster, schema: str, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """How many jobs succeeded after ``since``, and when the first of them did."""
    ((count, first),) = rows(
        cluster,
        schema,
        "SELECT count(*), min(finalized_at) FROM {s}.all_jobs"
        " WHERE status = 'succeeded' AND finalized_at > %s",
        (since,),
    )
    return int(count), first


def postmaster_started(cluster: PrivateCluster) -> dt.datetime:
    """When the running postmaster started: the end of the outage, on the server's clock."""
    with connect(cluster) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    started: dt.datetime = row[0]
    return started


def assert_alive(daemons: DaemonFactory, when: str) -> None:
    """Fail, with the logs, if a daemon exited."""
    dead = [(d.pid, d.proc.returncode) for d in daemons.daemons if d.proc.poll() is not None]
    assert not dead, f"daemons exited {when} (pid, code): {dead}\n{daemons.logs()}"


@contextlib.contextmanager
def producing(producer: Producer) -> Iterator[Producer]:
    """Run the producer for the duration of the block."""
    producer.start()
    try:
        yield producer
    finally:
        producer.stop()


def restart_under_load(
    cluster: PrivateCluster,
    schema: str,
    daemons: DaemonFactory,
    mode: StopMode,
    number: int,
    successes: int,
) -> tuple[float, float]:
    """Restart the cluster and wait until jobs and ticks flow again.

    Returns the seconds from the start of the restart until the server was
    back, and until the first job finished.
    """
    began = dt.datetime.now(dt.UTC)
    cluster.restart(mode)
    back = postmaster_started(cluster)
    assert back > began, f"the postmaster did not restart: started {back}, restart began {began}"
    what = f"restart {number} ({mode})"

    def flowing() -> dt.datetime | None:
        assert_alive(daemons, f"after {what}")
        count, first = succeeded_since(cluster, schema, back)
        return first if count >= successes else None

    first = wait_until(
        flowing,
        timeout=RECOVERY_TIMEOUT_S,
        interval=0.1,
        message=f"jobs did not flow again after {what}:\n{daemons.logs()}",
    )
    # The orchestrator is back too: a tick after the restart was scheduled and ran.
    wait_until(
        lambda: rows(
            cluster,
            schema,
            "SELECT 1 FROM {s}.all_jobs WHERE definition = %s AND tick_at > %s"
            " AND status = 'succeeded' LIMIT 1",
            (TICK, back),
        ),
        timeout=RECOVERY_TIMEOUT_S,
        interval=0.1,
        message=f"no tick ran after {what}:\n{daemons.logs()}",
    )
    away = (back - began).total_seconds()
    to_first_job = (first - began).total_seconds()
    print(
        f"{what}: server back after {away:.2f} s, "
        f"first job finished {to_first_job:.2f} s after the restart began"
    )
    return away, to_first_job


def listening_again(worker: Daemon) -> bool:
    """The worker lost its LISTEN connection to the restarts, and has it back."""
    log = [worker.log()]
    lost = len(events(log, "WorkerListenLost"))
    return lost > 0 and len(events(log, "WorkerListenRestored")) == lost


def stop_gracefully(daemon: Daemon) -> int:
    """SIGTERM, wait for the exit; the exit code."""
    daemon.send(signal.SIGTERM)
    return daemon.wait(timeout=60)


def all_finished(cluster: PrivateCluster, schema: str) -> bool:
    """No job of the schema is waiting, available or running."""
    ((count,),) = rows(
        cluster,
        schema,
        "SELECT count(*) FROM {s}.job WHERE status IN ('waiting', 'available', 'running')",
    )
    return int(count) == 0


@contextlib.contextmanager
def explained(snap: Snapshot, daemons: DaemonFactory) -> Iterator[None]:
    """Add to a failure what the snapshot and the daemons' logs say of the jobs it names."""
    try:
        yield
    except AssertionError as exc:
        named = sorted({int(n) for n in re.findall(r"\bjob (\d+)", str(exc))})[:SHOWN_JOBS]
        attempts, executions = snap.attempts_of(), snap.executions_of()
        lines = [str(exc), "", "--- the jobs named above ---"]
        for job_id in named:
            lines.append(f"{snap.jobs.get(job_id)}")
            lines += [f"  attempt log: {row}" for row in attempts.get(job_id, [])]
            lines += [f"  ledger: {run}" for run in executions.get(job_id, [])]
            needle = f'"job_id": {job_id},'
            for daemon in daemons.daemons:
                lines += [
                    f"  {daemon.log_path.name}: {line}"
                    for line in daemon.log().splitlines()
                    if needle in line
                ]
        raise AssertionError("\n".join(lines)) from None


def run_case(
    mode: StopMode,
    *,
    cluster: PrivateCluster,
    schema: str,
    jobs: dict[str, JobDefinition[Any]],
    daemons: DaemonFactory,
    scale: Scale,
    report: Report,
) -> None:
    """Load, restart ``restarts_for(mode)`` times, drain, stop the daemons, check, report."""
    rng = random.Random(f"postgres-restart-{mode}")
    restarts = restarts_for(mode, scale)
    orchestrator = start_orchestrator(daemons, ticks=True)
    workers = [
        start_worker(daemons, name=f"w{index}", concurrency=CONCURRENCY, ticks=True)
        for index in range(WORKERS)
    ]
    producer = Producer(jobs["retried"], rng)
    between = scale.pick(*SUCCESSES_BETWEEN)
    timings: list[tuple[float, float]] = []
    with producing(producer):
        epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        wait_until(
            lambda: succeeded_since(cluster, schema, epoch)[0] >= between[0],
            timeout=RECOVERY_TIMEOUT_S,
            interval=0.1,
            message=f"no load before the first restart:\n{daemons.logs()}",
        )
        for number in range(1, restarts + 1):
            successes = rng.randint(*between)
            timings.append(restart_under_load(cluster, schema, daemons, mode, number, successes))
    committed = producer.committed()
    drain_s = scale.pick(90, 600)

    with connect(cluster) as conn:
        settled = settle(conn, schema, committed, timeout=drain_s)
    assert_alive(daemons, "after the restarts")
    # Jobs of a claim whose reply the outage swallowed come back through the
    # orchestrator: wait with it running until nothing is left over.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: all_finished(cluster, schema), timeout=drain_s, interval=0.2)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: all(listening_again(w) for w in workers), timeout=30, interval=0.2)
    deaf = [w.pid for w in workers if not listening_again(w)]
    exits = {f"orchestrator {orchestrator.pid}": stop_gracefully(orchestrator)}
    # The last tick's job may have been scheduled just before the stop.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: all_finished(cluster, schema), timeout=drain_s, interval=0.2)
    exits.update({f"worker {w.pid}": stop_gracefully(w) for w in workers})

    with connect(cluster) as conn:
        snap: Snapshot = snapshot(conn, schema)
    tick = dt.timedelta(milliseconds=TICK_INTERVAL_MS)
    away = max(t[0] for t in timings)
    to_first_job = max(t[1] for t in timings)
    with explained(snap, daemons):
        conclude(
            report,
            snap,
            case=f"postgres-restart-{mode}",
            job_ids=committed,
            faults=len(cluster.restarts),
            note=(
                f"first_job_after_restart_s={to_first_job:.2f} server_away_s={away:.2f} "
                f"defer_retries={producer.raised} ticks={tick_count(snap, TICK)} "
                f"pg={cluster.binaries.source}"
            ),
            violations={
                **basic_checks(snap, committed),
                "settled": [] if settled else ["committed jobs still unfinished at the deadline"],
                "unfinished": unfinished(snap),
                "doubled ticks": doubled_ticks(snap, TICK, tick),
                "success events": success_events(snap, logs(daemons), complete=False),
                "not listening again": [f"worker {pid}" for pid in deaf],
                "unclean exits": [
                    f"{who} exited with {code}" for who, code in exits.items() if code
                ],
            },
        )


def test_daemons_reconnect_after_fast_restarts_and_no_committed_job_is_lost(
    cluster: PrivateCluster,
    ledger: str,
    fault_jobs: dict[str, JobDefinition[Any]],
    daemons: DaemonFactory,
    scale: Scale,
    report: Report,
) -> None:
    run_case(
        "fast",
        cluster=cluster,
        schema=ledger,
        jobs=fault_jobs,
        daemons=daemons,
        scale=scale,
        report=report,
    )


def test_daemons_reconnect_after_crash_restarts_and_no_committed_job_is_lost(
    cluster: PrivateCluster,
    ledger: str,
    fault_jobs: dict[str, JobDefinition[Any]],
    daemons: DaemonFactory,
    scale: Scale,
    report: Report,
) -> None:
    run_case(
        "immediate",
        cluster=cluster,
        schema=ledger,
        jobs=fault_jobs,
        daemons=daemons,
        scale=scale,
        report=report,
    )


def test_a_crash_does_not_forget_the_claim_of_a_job_its_worker_is_running(
    cluster: PrivateCluster,
    config: Config,
    daemons: DaemonFactory,
    tmp_path: Path,
) -> None:
    """A claim the worker acted on survives a crash: the job is not handed out a second time.

    The WAL writer is slowed down, and the job's function writes nothing, so
    that the claim's commit is durable only if the claim itself waited for
    the flush. Otherwise recovery forgets it: the job is available again,
    with its attempt counter rolled back, while its first execution still
    runs, and the next claim runs it a second time at once.
    """
    with connect(cluster) as conn:
        conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
    cluster.restart("fast")
    config.close()  # its pooled connections died with the restart
    executions = tmp_path / "executions"
    executions.mkdir()
    daemons.env[restart_app.EXECS_ENV] = str(executions)
    held = restart_app.define(config)
    daemons.start(app=HELD_APP, name="holder", concurrency=1)
    job_id = held.defer({}).id

    def ran() -> list[str]:
        return sorted(p.name for p in executions.iterdir() if p.name.startswith("run-"))

    def claim() -> list[Any]:
        return rows(
            cluster,
            config.schema,
            "SELECT status::text, attempt, lock_token FROM {s}.all_jobs WHERE id = %s",
            (job_id,),
        )

    wait_until(ran, timeout=RECOVERY_TIMEOUT_S, message=f"job {job_id} never started")
    before = claim()
    cluster.restart("immediate")
    after = claim()
    (executions / restart_app.RELEASE).touch()
    assert after == before, (
        f"the crash forgot the claim of job {job_id} while its worker ran it: "
        f"(status, attempt, lock token) {before} before, {after} after"
    )
    wait_until(
        lambda: claim()[0][0] == "succeeded",
        timeout=RECOVERY_TIMEOUT_S,
        message=f"job {job_id} did not succeed:\n{daemons.logs()}",
    )
    assert ran() == [f"run-{job_id}-1-{daemons.daemons[0].pid}"]


@pytest.mark.parametrize("source", ["debian", "embedded"])
def test_private_cluster_keeps_committed_rows_across_crash_restarts_and_is_removed_after(
    source: BinarySource,
) -> None:
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(private_cluster(source))
        except ClusterUnavailableError as exc:
            pytest.skip(str(exc))
        assert cluster.binaries.source == source
        assert cluster.port != SHARED_PORT
        with connect(cluster) as conn:
            conn.execute("CREATE TABLE kept (n integer)")
            conn.execute("INSERT INTO kept VALUES (1)")
            row = conn.execute("SELECT current_setting('fsync')").fetchone()
        assert row == ("on",)
        first = cluster.postmaster_pid()
        cluster.restart("immediate")
        assert cluster.postmaster_pid() not in (None, first)
        cluster.restart("fast")
        cluster.stop("immediate")
        assert not cluster.running()
        cluster.start()
        with connect(cluster) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]
        base = cluster.base
    assert not base.exists()


def test_binaries_fall_back_to_the_embedded_package_when_debian_has_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(cluster_module.BINDIR_ENV, raising=False)
    monkeypatch.setattr(cluster_module, "DEBIAN_ROOT", tmp_path / "no-debian-packages")
    try:
        found = cluster_module.find_binaries()
    except ClusterUnavailableError as exc:
        pytest.skip(f"pgserver is not installed either: {exc}")
    assert found.source == "embedded"
    assert (found.bindir / "pg_ctl").is_file()


def test_without_any_binaries_the_cluster_is_unavailable_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(cluster_module.BINDIR_ENV, raising=False)
    monkeypatch.setattr(cluster_module, "DEBIAN_ROOT", tmp_path / "no-debian-packages")
    monkeypatch.setattr(cluster_module, "_embedded_bindir", lambda: None)

    def no_directory(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("a directory was made for a cluster that cannot start")

    monkeypatch.setattr(tempfile, "mkdtemp", no_directory)
    with (
        pytest.raises(ClusterUnavailableError, match="no PostgreSQL server binaries"),
        private_cluster(),
    ):
        pytest.fail("a cluster started without binaries")
