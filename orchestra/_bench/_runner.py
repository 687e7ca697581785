"""orchestra's side of each workload, the figures, and orchestra's bench worker."""

from __future__ import annotations

import argparse
import collections
import contextlib
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
from orchestra._bench._floor import LeanFloor
from orchestra._bench._measure import (
    POLL_S,
    Drained,
    Settings,
    bench_queries,
    noop,
    paced,
    percentile,
    start_workers,
    stop_workers,
    wait_drained,
)
from orchestra._config import Config
from orchestra._database import DSN_ENV, LISTEN_DSN_ENV, TRANSACTION_POOLING_ENV
from orchestra._definition import JobDefinition
from orchestra.errors import ConfigurationError
from orchestra.testing import wait_until

if TYPE_CHECKING:
    from orchestra._bench._pgqueuer import PgQueuerPeer

CHANNEL = "bench"
NOOP = "bench-noop"
LATENCY = "bench-latency"
#: The definition of the finalized rows of ``--finalized-rows`` (never run).
FILLER = "bench-finalized"
#: Jobs per defer_many call: what an application would batch.
DEFER_MANY_BATCH = 1_000


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


def _per_second(count: float, seconds: float) -> float:
    """``count`` per second over ``seconds``; a run too short for the clock (the
    bench warns when ``--jobs`` is too small) gives a huge rate, not a crash."""
    return count / max(seconds, 1e-6)


class Bench:
    """One bench run against ``dsn`` on a fresh schema.

    With ``transaction_pooling`` (``dsn`` leads to PgBouncer in transaction
    mode), orchestra's producers and workers go through ``dsn`` as a Config
    with ``transaction_pooling`` and ``listen_dsn`` does, while the lean floor,
    PgQueuer (whose asyncpg connections prepare statements) and the bench's
    own loads and clean-ups use ``listen_dsn``, the direct connection: the
    floor stays a baseline without the pooler, and the ratio to it includes
    what the pooler costs.
    """

    def __init__(
        self,
        dsn: str,
        settings: Settings,
        *,
        log: Callable[[str], None],
        transaction_pooling: bool = False,
        listen_dsn: str | None = None,
    ) -> None:
        if transaction_pooling and listen_dsn is None:
            raise ConfigurationError(
                "--listen-dsn",
                "a transaction-pooled bench needs the direct DSN (--listen-dsn or "
                "$ORCHESTRA_LISTEN_DSN): the lean floor and PgQueuer run on it, and "
                "orchestra's workers LISTEN on it",
            )
        self.dsn = dsn
        self.transaction_pooling = transaction_pooling
        self.listen_dsn = listen_dsn
        #: Where the floor, the peers and the bench's own statements go.
        self.direct = listen_dsn if transaction_pooling and listen_dsn is not None else dsn
        self.settings = settings
        self.log = log
        self.schema = f"orchestra_bench_{uuid.uuid4().hex[:8]}"
        self.config = Config(
            dsn,
            schema=self.schema,
            transaction_pooling=transaction_pooling,
            listen_dsn=listen_dsn,
        )
        self.noop, self.latency = define(self.config)
        self.filler = JobDefinition(self.config, name=FILLER, job_function=noop, channel=CHANNEL)
        self.queries = bench_queries(self.schema)
        self.floor = LeanFloor(self.direct, self.schema, self.queries)
        self.pgqueuer: PgQueuerPeer | None = None
        if "pgqueuer" in settings.peers:
            # An optional extra: imported only when asked for.
            from orchestra._bench._pgqueuer import PgQueuerPeer  # noqa: PLC0415

            self.pgqueuer = PgQueuerPeer(self.direct, f"{self.schema}_pgqueuer", settings, log=log)

    def paths(self) -> dict[str, str]:
        """How each column's figures reached PostgreSQL (passwords hidden)."""
        orchestra = _db.redact_dsn(self.dsn)
        listen = self.config.listen_dsn
        if self.transaction_pooling:
            # The constructor refused a pooled bench without a listen DSN.
            orchestra += f" (transaction pooling; LISTEN at {_db.redact_dsn(self.direct)})"
        elif listen is not None and listen != self.dsn:
            orchestra += f" (LISTEN at {_db.redact_dsn(listen)})"
        found = {"orchestra": orchestra, "floor": _db.redact_dsn(self.direct)}
        if self.pgqueuer is not None:
            found["pgqueuer"] = found["floor"]
        return found

    def _worker_env(self) -> dict[str, str]:
        """The environment a bench worker builds its Config from: this bench's, whatever
        the caller's environment says."""
        return {
            DSN_ENV: self.dsn,
            TRANSACTION_POOLING_ENV: "1" if self.transaction_pooling else "0",
            # Empty: no listen DSN; a worker then LISTENs on its DSN unless pooled.
            LISTEN_DSN_ENV: self.listen_dsn or "",
        }

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        # Loads, resets and counts are the bench's, not what it measures: direct.
        with _db.connect(self.direct) as conn:
            yield conn

    def _reset(self) -> None:
        with self._conn() as conn:
            conn.execute(self.queries["bench_reset"])

    def _copy(self, definition: str, count: int) -> None:
        row = (definition, CHANNEL, "{}", 1)
        with (
            self._conn() as conn,
            conn.cursor() as cursor,
            cursor.copy(self.queries["bench_copy_jobs"]) as copy,
        ):
            for _ in range(count):
                copy.write_row(row)

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
            self.floor.create()
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
        floor_single = self.floor.single_inserts(n)
        self.noop.defer({})  # the pool is opened outside the timing
        started = time.perf_counter()
        for _ in range(n):
            self.noop.defer({})
        single = n / (time.perf_counter() - started)
        self._reset()

        floor_copy = self.floor.copy(self.settings.jobs)
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
        floor_total, floor_steady = self.floor.processing(s.jobs)

        run = self._orchestra_run()
        peer: Drained | None = None
        if self.pgqueuer is not None:
            peer = self.pgqueuer.processing()
        steady_jobs = s.jobs * 0.8
        figures = [
            Figure(
                "processing, steady (10-90 %)",
                "jobs/s",
                _per_second(steady_jobs, run.steady_s),
                _per_second(steady_jobs, floor_steady),
                None if peer is None else _per_second(steady_jobs, peer.steady_s),
            ),
            Figure(
                "processing, end to end",
                "jobs/s",
                _per_second(s.jobs, run.total_s),
                _per_second(s.jobs, floor_total),
                None if peer is None else _per_second(s.jobs, peer.total_s),
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
                    _per_second(steady_jobs, crowded.steady_s),
                    _per_second(steady_jobs, floor_steady),
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
            self._worker_argv(s.concurrency), s.processes, self._worker_env()
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
        workers, _ = start_workers(self._worker_argv(s.concurrency), 1, self._worker_env(), values)
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
        floor = self.floor.latency(s.latency_jobs, s.latency_rate)
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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def figures_as_json(bench: Bench, figures: list[Figure]) -> dict[str, Any]:
    """What ``--json`` prints."""
    settings = attrs.asdict(bench.settings)
    settings["peers"] = list(bench.settings.peers)
    return {
        "settings": settings,
        "schema": bench.schema,
        "paths": bench.paths(),
        "transaction_pooling": bench.transaction_pooling,
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


# -- orchestra's worker process ------------------------------------------------------------


def worker_main(argv: list[str]) -> None:
    """``python -m orchestra._bench worker``: an orchestra worker process of the bench."""
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
