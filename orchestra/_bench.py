"""``orchestra bench``: how fast orchestra moves jobs, next to the lean floor.

Every figure is measured in the same run through orchestra and through the
*lean floor*: the least a ``SKIP LOCKED`` queue can do, on a table of the
bench's own (``lean_q``: id, payload, status, two timestamps, one partial
index; finished rows deleted). The floor carries none of orchestra's costs
(definitions, channels, priorities, attempts, leases, kept rows, their
indexes), so the ratio to it is what those cost. The machine is shared and
noisy: compare ratios across runs, not absolute rates.

Runs, on a throwaway schema dropped at the end:

* enqueue: ``defer`` one job per transaction vs one INSERT, autocommit;
  ``defer_many`` in batches vs one COPY;
* processing: N no-op jobs drained by worker processes (``--processes``,
  ``--concurrency``) vs one connection claiming 100 with ``SKIP LOCKED``,
  calling a no-op per row and deleting the 100; end to end (from starting
  the workers) and steady state (10 % to 90 % done);
* latency: jobs deferred at a fixed low rate to an idle worker, from the
  enqueueing call to the start of the job function (p50, p95, p99), vs an
  INSERT + NOTIFY woken listener that claims the job;
* idle: CPU and statements of a worker with nothing to do.

With ``peers=("pgqueuer",)`` the same workloads also run through PgQueuer
(:mod:`orchestra._bench_pgqueuer`), in a schema of its own.

Worker processes are this module run as ``python -m orchestra._bench worker``
(orchestra) or ``pgqueuer-worker`` (PgQueuer).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import psycopg
from psycopg import sql

from orchestra import _db
from orchestra._config import Config
from orchestra._definition import JobDefinition
from orchestra.testing import wait_until

if TYPE_CHECKING:
    from orchestra._bench_pgqueuer import PgQueuerPeer

CHANNEL = "bench"
NOOP = "bench-noop"
LATENCY = "bench-latency"
#: The definition of the finalized rows of ``--finalized-rows`` (never run).
FILLER = "bench-finalized"
#: Jobs per defer_many call: what an application would batch.
DEFER_MANY_BATCH = 1_000
POLL_S = 0.02
#: Peers the bench knows how to run.
PEERS = ("pgqueuer",)
#: Below this many jobs a processing run is mostly start-up and ramp.
MEANINGFUL_JOBS = 5_000
#: Below this many latency jobs p99 is the slowest sample or close to it.
MEANINGFUL_LATENCY_JOBS = 100


def noop() -> None:
    """The no-op job of the processing runs (and the floor's per-row call)."""


#: Seconds from enqueueing to start of the latency jobs this process ran, until
#: a bench worker reports them (as ``latency <seconds>`` lines).
_latencies: collections.deque[float] = collections.deque()


def since_enqueue(payload: dict[str, float]) -> None:
    """The latency job: seconds from the enqueueing call to now (same host clock)."""
    _latencies.append(time.time() - payload["t0"])


def define(config: Config) -> tuple[JobDefinition[Any], JobDefinition[Any]]:
    """The bench's two definitions, on the bench channel."""
    return (
        JobDefinition(config, name=NOOP, job_function=noop, channel=CHANNEL),
        JobDefinition(config, name=LATENCY, job_function=since_enqueue, channel=CHANNEL),
    )


def _ratio(orchestra: float, other: float | None, higher_is_better: bool | None) -> float | None:
    """orchestra / other for rates, other / orchestra for latencies; None if not comparable."""
    if higher_is_better is None or not other or not orchestra:
        return None
    return orchestra / other if higher_is_better else other / orchestra


@attrs.frozen
class Figure:
    """One measured line: orchestra's value, the lean floor's, a peer's."""

    name: str
    unit: str
    orchestra: float
    floor: float | None = None
    pgqueuer: float | None = None
    #: True for rates, False for latencies and costs, None: no ratio means anything.
    higher_is_better: bool | None = True

    @property
    def ratio_floor(self) -> float | None:
        """1.0: as good as the lean floor; higher is better."""
        return _ratio(self.orchestra, self.floor, self.higher_is_better)

    @property
    def ratio_pgqueuer(self) -> float | None:
        """1.0: as good as PgQueuer; higher is better."""
        return _ratio(self.orchestra, self.pgqueuer, self.higher_is_better)


@attrs.define
class Settings:
    """What to measure (the command's options)."""

    jobs: int = 20_000
    processes: int = 1
    concurrency: int = 100
    single_defers: int = 2_000
    latency_jobs: int = 100
    latency_rate: float = 20.0
    idle_seconds: float = 5.0
    process_interval_ms: int = 1_000
    #: Finalized jobs left in the table for a second processing run (0: none).
    finalized_rows: int = 0
    #: Other queues measured on the same workloads (names from PEERS).
    peers: tuple[str, ...] = ()

    def warnings(self) -> list[str]:
        """Why some figures of these settings will not mean much (empty: none)."""
        found = []
        if self.jobs < MEANINGFUL_JOBS:
            found.append(
                f"--jobs {self.jobs:,} is too few for the processing figures to mean anything "
                f"(start-up and ramp dominate): use at least {MEANINGFUL_JOBS:,}"
            )
        if self.latency_jobs < MEANINGFUL_LATENCY_JOBS:
            found.append(
                f"--latency-jobs {self.latency_jobs} is too few for p95/p99 to mean anything: "
                f"use at least {MEANINGFUL_LATENCY_JOBS}"
            )
        return found


@attrs.frozen
class Drained:
    """A processing run: seconds to the last job, seconds from 10 % to 90 %, RSS growth %."""

    total_s: float
    steady_s: float
    rss_growth: float


class Bench:
    """One bench run against ``dsn`` on a fresh schema."""

    def __init__(self, dsn: str, settings: Settings, *, log: Callable[[str], None]) -> None:
        self.dsn = dsn
        self.settings = settings
        self.log = log
        self.schema = f"orchestra_bench_{uuid.uuid4().hex[:8]}"
        self.config = Config(dsn, schema=self.schema)
        self.noop, self.latency = define(self.config)
        self.filler = JobDefinition(self.config, name=FILLER, job_function=noop, channel=CHANNEL)
        self.queries = self.config.queries
        self.pgqueuer: PgQueuerPeer | None = None
        if "pgqueuer" in settings.peers:
            from orchestra._bench_pgqueuer import PgQueuerPeer  # noqa: PLC0415 (optional extra)

            self.pgqueuer = PgQueuerPeer(dsn, f"{self.schema}_pgqueuer", settings, log=log)

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with _db.connect(self.dsn) as conn:
            yield conn

    def _reset(self) -> None:
        with self._conn() as conn:
            conn.execute(self.queries["bench_reset"])

    def _lean_reset(self) -> None:
        with self._conn() as conn:
            conn.execute(self.queries["bench_lean_reset"])

    def _copy(self, definition: str, count: int) -> None:
        row = (definition, CHANNEL, "{}", 1)
        with (
            self._conn() as conn,
            conn.cursor() as cursor,
            cursor.copy(self.queries["bench_copy_jobs"]) as copy,
        ):
            for _ in range(count):
                copy.write_row(row)

    def _lean_copy(self, count: int) -> None:
        with (
            self._conn() as conn,
            conn.cursor() as cursor,
            cursor.copy(self.queries["bench_lean_copy"]) as copy,
        ):
            for _ in range(count):
                copy.write_row(("{}",))

    def _unfinished(self, definition: str) -> int:
        with self._conn() as conn:
            row = conn.execute(
                self.queries["bench_count_unfinished"], {"definition": definition}
            ).fetchone()
        return int(row[0]) if row else 0

    def run(self) -> list[Figure]:
        """Every measurement, in order; the schemas are dropped whatever happens."""
        try:
            self.config.prepare_schema()
            with self._conn() as conn:
                for definition in (self.noop, self.latency, self.filler):
                    definition.upsert(conn)
                conn.execute(self.queries["bench_lean_create_table"])
                conn.execute(self.queries["bench_lean_create_index"])
            if self.pgqueuer is not None:
                self.pgqueuer.install()
            return [*self.enqueue(), *self.processing(), *self.latency_run(), *self.idle()]
        finally:
            self.config.close()
            with self._conn() as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
                )
            if self.pgqueuer is not None:
                self.pgqueuer.uninstall()

    # -- enqueue ----------------------------------------------------------------

    def enqueue(self) -> list[Figure]:
        """Single defers vs single INSERTs; defer_many vs COPY."""
        n = self.settings.single_defers
        self.log(f"enqueue: {n} single defers, {self.settings.jobs} with defer_many")
        with self._conn() as conn:
            started = time.perf_counter()
            for _ in range(n):
                conn.execute(self.queries["bench_lean_insert"], {"payload": "{}"})
            floor_single = n / (time.perf_counter() - started)
        self._lean_reset()
        self.noop.defer({})  # the pool is opened outside the timing
        started = time.perf_counter()
        for _ in range(n):
            self.noop.defer({})
        single = n / (time.perf_counter() - started)
        self._reset()

        started = time.perf_counter()
        self._lean_copy(self.settings.jobs)
        floor_copy = self.settings.jobs / (time.perf_counter() - started)
        self._lean_reset()
        payloads: list[dict[str, Any]] = [{} for _ in range(self.settings.jobs)]
        started = time.perf_counter()
        for i in range(0, len(payloads), DEFER_MANY_BATCH):
            self.noop.defer_many(payloads[i : i + DEFER_MANY_BATCH])
        many = self.settings.jobs / (time.perf_counter() - started)
        self._reset()

        peer_single = peer_many = None
        if self.pgqueuer is not None:
            peer_single, peer_many = self.pgqueuer.enqueue(n, self.settings.jobs, DEFER_MANY_BATCH)
        return [
            Figure("defer, one per transaction", "jobs/s", single, floor_single, peer_single),
            Figure(
                f"defer_many, batches of {DEFER_MANY_BATCH}", "jobs/s", many, floor_copy, peer_many
            ),
        ]

    # -- processing -----------------------------------------------------------------

    def processing(self) -> list[Figure]:
        """N no-op jobs through worker processes vs the floor's claim/delete loop."""
        s = self.settings
        self.log(
            f"processing: {s.jobs} no-op jobs, first the lean floor, then {s.processes} "
            f"worker process(es) x concurrency {s.concurrency}"
        )
        self._lean_copy(s.jobs)
        with self._conn() as conn:
            conn.execute(self.queries["bench_lean_analyze"])
        floor_total, floor_steady = self._lean_loop(s.jobs)
        self._lean_reset()

        run = self._orchestra_run()
        peer: Drained | None = None
        if self.pgqueuer is not None:
            peer = self.pgqueuer.processing()
        steady_jobs = s.jobs * 0.8
        figures = [
            Figure(
                "processing, steady (10-90 %)",
                "jobs/s",
                steady_jobs / run.steady_s,
                steady_jobs / floor_steady,
                None if peer is None else steady_jobs / peer.steady_s,
            ),
            Figure(
                "processing, end to end",
                "jobs/s",
                s.jobs / run.total_s,
                s.jobs / floor_total,
                None if peer is None else s.jobs / peer.total_s,
            ),
            Figure(
                "worker RSS growth, 10 % to done",
                "%",
                run.rss_growth,
                pgqueuer=None if peer is None else peer.rss_growth,
                higher_is_better=None,
            ),
        ]
        if s.finalized_rows:
            self.log(f"processing again with {s.finalized_rows:,} finalized jobs in the table")
            self._copy_finalized(s.finalized_rows)
            crowded = self._orchestra_run()
            figures += [
                Figure(
                    f"steady, {s.finalized_rows:,} finalized rows",
                    "jobs/s",
                    steady_jobs / crowded.steady_s,
                    steady_jobs / floor_steady,
                ),
                Figure(
                    "steady, finalized rows / empty table",
                    "%",
                    100 * run.steady_s / crowded.steady_s,
                    higher_is_better=None,
                ),
            ]
        return figures

    def _orchestra_run(self) -> Drained:
        """Load the jobs, drain them with worker processes."""
        s = self.settings
        self._copy(NOOP, s.jobs)
        with self._conn() as conn:
            conn.execute(self.queries["bench_analyze"])
        started = time.perf_counter()
        workers, counts = start_workers(
            self._worker_argv(s.concurrency), s.processes, {"ORCHESTRA_DSN": self.dsn}
        )
        try:
            drained = wait_drained(s.jobs, workers, counts, started=started)
        finally:
            stop_workers(workers)
        unfinished = self._unfinished(NOOP)
        if unfinished:
            raise RuntimeError(f"the workers reported {s.jobs} jobs done, {unfinished} are not")
        self._reset()
        return drained

    def _copy_finalized(self, count: int) -> None:
        """Finished jobs as a busy queue keeps them: succeeded, in the history, not yet dropped."""
        with self._conn() as conn:
            conn.execute(self.queries["bench_history_prepare"], {"count": count})
            conn.execute(
                self.queries["bench_insert_finalized"],
                {"count": count, "definition": FILLER, "channel": CHANNEL},
            )
            conn.execute(self.queries["bench_analyze_history"])

    def _lean_loop(self, total: int) -> tuple[float, float]:
        """The floor: one connection claims 100, runs a no-op per row, deletes the 100."""
        done = 0
        marks: dict[str, float] = {}
        with self._conn() as conn:
            started = time.perf_counter()
            while True:
                # Autocommit: each statement is its own transaction, no BEGIN/COMMIT trips.
                rows = conn.execute(self.queries["bench_lean_claim"]).fetchall()
                if not rows:
                    break
                for _ in rows:
                    noop()
                conn.execute(self.queries["bench_lean_delete"], {"ids": [r[0] for r in rows]})
                done += len(rows)
                _mark(marks, done, total, time.perf_counter())
            elapsed = time.perf_counter() - started
        if done != total:
            raise RuntimeError(f"the lean floor drained {done} of {total} jobs")
        return elapsed, marks["90"] - marks["10"]

    def _worker_argv(self, concurrency: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "orchestra._bench",
            "worker",
            "--schema",
            self.schema,
            "--concurrency",
            str(concurrency),
            "--process-interval-ms",
            str(self.settings.process_interval_ms),
        ]

    # -- latency ------------------------------------------------------------------

    def latency_run(self) -> list[Figure]:
        """Deferring at a low fixed rate to an idle worker: enqueue call to job start."""
        s = self.settings
        self.log(f"latency: {s.latency_jobs} jobs at {s.latency_rate:g}/s, then the lean floor")
        values: list[float] = []
        workers, _ = start_workers(
            self._worker_argv(s.concurrency), 1, {"ORCHESTRA_DSN": self.dsn}, values
        )
        try:
            self._wait_ready(1)
            paced(s.latency_jobs, s.latency_rate, lambda: self.latency.defer({"t0": time.time()}))
            # The worker reports each job's latency: no table is read.
            wait_until(
                lambda: len(values) >= s.latency_jobs,
                timeout=60,
                interval=POLL_S,
                message="latency jobs did not start within 60 s",
            )
        finally:
            stop_workers(workers)
        self._reset()
        floor = self._lean_latency(s.latency_jobs)
        self._lean_reset()
        peer: list[float] | None = None
        if self.pgqueuer is not None:
            peer = self.pgqueuer.latency()
        return [
            Figure(
                f"latency {label}, defer to start",
                "ms",
                percentile(values, q) * 1000,
                percentile(floor, q) * 1000,
                None if peer is None else percentile(peer, q) * 1000,
                higher_is_better=False,
            )
            for label, q in (("p50", 50), ("p95", 95), ("p99", 99))
        ]

    def _wait_ready(self, count: int) -> None:
        def registered() -> bool:
            row = conn.execute(self.queries["bench_worker_ready"]).fetchone()
            return bool(row and row[0] >= count)

        with self._conn() as conn:
            wait_until(
                registered,
                timeout=60,
                interval=POLL_S,
                message="bench workers did not start within 60 s",
            )

    def _lean_latency(self, count: int) -> list[float]:
        """A listener woken by NOTIFY claims each job from lean_q; INSERT + NOTIFY to claim."""
        channel = f"bench_{self.schema}"
        ready = threading.Event()
        values: list[float] = []

        def listen() -> None:
            with self._conn() as conn:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                ready.set()
                while len(values) < count:
                    # Drained before the claim: the generator holds the connection.
                    if not list(conn.notifies(timeout=1.0, stop_after=1)):
                        continue
                    rows = conn.execute(self.queries["bench_lean_claim"]).fetchall()
                    now = time.time()
                    values.extend(now - float(payload["t0"]) for _, payload in rows)
                    if rows:
                        conn.execute(
                            self.queries["bench_lean_delete"], {"ids": [r[0] for r in rows]}
                        )

        thread = threading.Thread(target=listen, name="bench-floor-listener", daemon=True)
        thread.start()
        ready.wait(30)
        with self._conn() as conn:

            def insert() -> None:
                conn.execute(
                    self.queries["bench_lean_insert_notify"],
                    {"payload": json.dumps({"t0": time.time()}), "notify_channel": channel},
                )

            paced(count, self.settings.latency_rate, insert)
        thread.join(30)
        return values

    # -- idle -------------------------------------------------------------------------

    def idle(self) -> list[Figure]:
        """A worker with nothing to do: CPU and statements per polling interval."""
        from orchestra._worker import Worker  # noqa: PLC0415 (a daemon only for this run)

        seconds = self.settings.idle_seconds
        interval_ms = self.settings.process_interval_ms
        self.log(f"idle: one worker with nothing to do for {seconds:g} s")
        worker = Worker(
            self.config,
            channel=CHANNEL,
            concurrency=self.settings.concurrency,
            process_interval_ms=interval_ms,
            name="bench-idle",
        )
        worker.start()
        try:
            time.sleep(min(1.0, seconds / 2))  # past start-up
            queries = worker.stats.claim_queries + worker.stats.heartbeat_queries
            cpu = time.process_time()
            started = time.perf_counter()
            time.sleep(seconds)
            elapsed = time.perf_counter() - started
            cpu_share = (time.process_time() - cpu) / elapsed
            queries = worker.stats.claim_queries + worker.stats.heartbeat_queries - queries
        finally:
            worker.stop()
            worker.join()
        per_interval = queries / (elapsed * 1000 / interval_ms)
        return [
            Figure("idle worker CPU", "% core", cpu_share * 100, higher_is_better=None),
            Figure(
                "idle statements per interval",
                f"/{interval_ms} ms",
                per_interval,
                higher_is_better=None,
            ),
        ]


# -- worker processes, shared by orchestra's and the peers' runs -------------------------


def start_workers(
    argv: list[str],
    processes: int,
    env: dict[str, str],
    latencies: list[float] | None = None,
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """Start ``processes`` bench worker processes; the list their counts of jobs done go to.

    A worker prints its count of jobs done every POLL_S, and may print
    ``latency <seconds>`` lines, which go to ``latencies``.
    """
    workers = [
        subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    counts = [0] * processes
    for index, worker in enumerate(workers):
        threading.Thread(
            target=_follow, args=(worker, counts, index, latencies), daemon=True
        ).start()
    return workers, counts


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then SIGKILL whatever has not exited within 30 s."""
    for process in workers:
        process.terminate()
    for process in workers:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_drained(
    total: int,
    workers: list[subprocess.Popen[bytes]],
    counts: list[int],
    *,
    started: float,
) -> Drained:
    """Follow the jobs done that the workers report until every job is done.

    The workers print their count of jobs done every POLL_S: counting rows in
    the tables instead would load the database being measured. The RSS growth
    is the workers' resident memory from the 10 % mark to the end.
    """
    pids = [worker.pid for worker in workers]
    marks: dict[str, float] = {}
    rss_at_10: int | None = None
    # Generous: a slow configuration (concurrency 1) is a figure, not an error.
    deadline = started + max(300.0, total / 50)
    while True:
        done = sum(counts)
        now = time.perf_counter()
        _mark(marks, done, total, now)
        if rss_at_10 is None and "10" in marks:
            rss_at_10 = _rss(pids)
        if done >= total:
            growth = 100 * (_rss(pids) - rss_at_10) / rss_at_10 if rss_at_10 else 0.0
            return Drained(now - started, marks["90"] - marks["10"], growth)
        if now > deadline or not any(worker.poll() is None for worker in workers):
            raise RuntimeError(f"workers finished only {done} of {total} jobs")
        time.sleep(POLL_S)


def paced(count: int, rate: float, action: Callable[[], object]) -> None:
    """Call ``action`` ``count`` times at ``rate`` per second."""
    interval = 1 / rate
    next_at = time.perf_counter()
    for _ in range(count):
        action()
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))


def _mark(marks: dict[str, float], done: int, total: int, now: float) -> None:
    """Remember when 10 % and 90 % of the jobs were done."""
    if "10" not in marks and done >= total * 0.1:
        marks["10"] = now
    if "90" not in marks and done >= total * 0.9:
        marks["90"] = now


def _follow(
    worker: subprocess.Popen[bytes],
    counts: list[int],
    index: int,
    latencies: list[float] | None,
) -> None:
    """Keep ``counts[index]`` at the last count a bench worker printed."""
    assert worker.stdout is not None
    for line in worker.stdout:
        with contextlib.suppress(ValueError):
            if line.startswith(b"latency "):
                if latencies is not None:
                    latencies.append(float(line.split()[1]))
            else:
                counts[index] = int(line)


def _rss(pids: list[int]) -> int:
    """Resident memory of these processes in kB (Linux /proc; 0 where unreadable)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile of ``values`` (NaN for none)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def figures_as_json(bench: Bench, figures: list[Figure]) -> dict[str, Any]:
    """What ``--json`` prints."""
    settings = attrs.asdict(bench.settings)
    settings["peers"] = list(bench.settings.peers)
    return {
        "settings": settings,
        "schema": bench.schema,
        "warnings": bench.settings.warnings(),
        "peers": {} if bench.pgqueuer is None else {"pgqueuer": bench.pgqueuer.describe()},
        "figures": [
            {
                "name": f.name,
                "unit": f.unit,
                "orchestra": round(f.orchestra, 3),
                "floor": _rounded(f.floor),
                "ratio_floor": _rounded(f.ratio_floor),
                "pgqueuer": _rounded(f.pgqueuer),
                "ratio_pgqueuer": _rounded(f.ratio_pgqueuer),
            }
            for f in figures
        ],
    }


def _worker_main(argv: list[str]) -> None:
    """``python -m orchestra._bench worker``: a worker process of the bench."""
    from orchestra._worker import Worker  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="orchestra._bench worker")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--process-interval-ms", type=int, default=1_000)
    options = parser.parse_args(argv)
    config = Config(schema=options.schema)
    define(config)
    worker = Worker(
        config,
        channel=CHANNEL,
        concurrency=options.concurrency,
        process_interval_ms=options.process_interval_ms,
        name="bench",
    )

    def report() -> None:
        # The bench follows progress here rather than by counting rows.
        while True:
            while _latencies:
                sys.stdout.write(f"latency {_latencies.popleft()}\n")
            sys.stdout.write(f"{worker.stats.succeeded}\n")
            sys.stdout.flush()
            time.sleep(POLL_S)

    threading.Thread(target=report, name="bench-report", daemon=True).start()
    worker.run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        _worker_main(sys.argv[2:])
    elif sys.argv[1:2] == ["pgqueuer-worker"]:
        from orchestra._bench_pgqueuer import worker_main

        worker_main(sys.argv[2:])
    else:
        sys.exit(
            "usage: python -m orchestra._bench worker|pgqueuer-worker --schema S --concurrency N"
        )
