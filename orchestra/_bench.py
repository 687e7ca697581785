"""``orchestra bench``: how fast orchestra moves jobs, next to a raw-SQL baseline.

Every figure is measured twice in the same run: once through orchestra and
once through the plainest psycopg code that does the same work on the same
table (single INSERTs, COPY, a claim-100 / finish-100 ``SKIP LOCKED`` loop, a
bare INSERT + NOTIFY). The machine is shared and noisy, so the ratio between
the two is the figure to compare across runs, not the absolute rate.

Runs, on a throwaway schema dropped at the end:

* enqueue: ``defer`` one job per transaction vs INSERT + COMMIT; ``defer_many``
  in batches vs one COPY;
* processing: N no-op jobs loaded by COPY, drained by worker processes
  (``--processes``, ``--concurrency``) vs the raw loop in one process;
  end to end (from starting the workers) and steady state (10 % to 90 % done);
* latency: jobs deferred at a fixed low rate to an idle worker, from the
  enqueueing call to the start of the job function (p50, p95, p99), vs a bare
  INSERT + NOTIFY woken listener that claims the job;
* idle: CPU and statements of a worker with nothing to do.

Worker processes are this module run as ``python -m orchestra._bench worker``.
"""

from __future__ import annotations

import argparse
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
from typing import Any

import attrs
import psycopg
from psycopg import sql

from orchestra import _db
from orchestra._config import Config
from orchestra._definition import JobDefinition
from orchestra.testing import wait_until

CHANNEL = "bench"
NOOP = "bench-noop"
LATENCY = "bench-latency"
#: The definition of the finalized rows of ``--finalized-rows`` (never run).
FILLER = "bench-finalized"
#: Jobs per defer_many call: what an application would batch.
DEFER_MANY_BATCH = 1_000
RAW_BATCH = 100
POLL_S = 0.02


def noop() -> None:
    """The no-op job of the processing runs."""


def since_enqueue(payload: dict[str, float]) -> float:
    """The latency job: seconds from the enqueueing call to now (same host clock)."""
    return time.time() - payload["t0"]


def define(config: Config) -> tuple[JobDefinition[Any], JobDefinition[Any]]:
    """The bench's two definitions, on the bench channel."""
    return (
        JobDefinition(config, name=NOOP, job_function=noop, channel=CHANNEL),
        JobDefinition(config, name=LATENCY, job_function=since_enqueue, channel=CHANNEL),
    )


@attrs.frozen
class Figure:
    """One measured line: orchestra's value, the baseline's, and what is better."""

    name: str
    unit: str
    orchestra: float
    baseline: float | None
    higher_is_better: bool = True
    target: float | None = None

    @property
    def ratio(self) -> float | None:
        """orchestra / baseline for rates, baseline / orchestra for latencies (1.0: as good)."""
        if self.baseline is None or not self.baseline or not self.orchestra:
            return None
        if self.higher_is_better:
            return self.orchestra / self.baseline
        return self.baseline / self.orchestra


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

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with _db.connect(self.dsn) as conn:
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

    def _succeeded(self, conn: psycopg.Connection[Any], definition: str) -> int:
        row = conn.execute(
            self.queries["bench_count_succeeded"], {"definition": definition}
        ).fetchone()
        return int(row[0]) if row else 0

    def run(self) -> list[Figure]:
        """Every measurement, in order; the schema is dropped whatever happens."""
        self.config.prepare_schema()
        try:
            with self._conn() as conn:
                for definition in (self.noop, self.latency, self.filler):
                    definition.upsert(conn)
            figures = [*self.enqueue(), *self.processing(), *self.latency_run(), *self.idle()]
        finally:
            self.config.close()
            with self._conn() as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
                )
        return figures

    # -- enqueue ----------------------------------------------------------------

    def enqueue(self) -> list[Figure]:
        """Single defers vs INSERT + COMMIT; defer_many vs COPY."""
        n = self.settings.single_defers
        self.log(f"enqueue: {n} single defers, {self.settings.jobs} with defer_many")
        params = {"definition": NOOP, "channel": CHANNEL, "payload": "{}"}
        with self._conn() as conn:
            started = time.perf_counter()
            for _ in range(n):
                conn.execute(self.queries["bench_insert_raw"], params)
            raw_single = n / (time.perf_counter() - started)
        self._reset()
        self.noop.defer({})  # the pool is opened outside the timing
        started = time.perf_counter()
        for _ in range(n):
            self.noop.defer({})
        single = n / (time.perf_counter() - started)
        self._reset()

        started = time.perf_counter()
        self._copy(NOOP, self.settings.jobs)
        raw_copy = self.settings.jobs / (time.perf_counter() - started)
        self._reset()
        payloads: list[dict[str, Any]] = [{} for _ in range(self.settings.jobs)]
        started = time.perf_counter()
        for i in range(0, len(payloads), DEFER_MANY_BATCH):
            self.noop.defer_many(payloads[i : i + DEFER_MANY_BATCH])
        many = self.settings.jobs / (time.perf_counter() - started)
        self._reset()
        return [
            Figure("defer, one per transaction", "jobs/s", single, raw_single, target=0.8),
            Figure(
                f"defer_many, batches of {DEFER_MANY_BATCH}", "jobs/s", many, raw_copy, target=0.5
            ),
        ]

    # -- processing -----------------------------------------------------------------

    def processing(self) -> list[Figure]:
        """N no-op jobs through worker processes vs the raw claim/finish loop."""
        s = self.settings
        self.log(
            f"processing: {s.jobs} no-op jobs, {s.processes} worker process(es) "
            f"x concurrency {s.concurrency}, then the raw loop"
        )
        self._copy(NOOP, s.jobs)
        raw_total, raw_steady = self._raw_loop(s.jobs)
        self._reset()

        total_s, steady_s, rss = self._orchestra_run()
        steady_jobs = s.jobs * 0.8
        figures = [
            Figure(
                "processing, steady (10-90 %)",
                "jobs/s",
                steady_jobs / steady_s,
                steady_jobs / raw_steady,
                target=0.75,
            ),
            Figure(
                "processing, end to end",
                "jobs/s",
                s.jobs / total_s,
                s.jobs / raw_total,
            ),
            Figure("worker RSS growth, 10 % to done", "%", rss, None, higher_is_better=False),
        ]
        if s.finalized_rows:
            self.log(f"processing again with {s.finalized_rows:,} finalized jobs in the table")
            self._copy_finalized(s.finalized_rows)
            _, crowded_s, _ = self._orchestra_run()
            figures.append(
                Figure(
                    f"steady with {s.finalized_rows:,} finalized rows (vs empty table)",
                    "jobs/s",
                    steady_jobs / crowded_s,
                    steady_jobs / steady_s,
                    target=0.8,
                )
            )
        return figures

    def _orchestra_run(self) -> tuple[float, float, float]:
        """Load the jobs, drain them with worker processes: total s, steady s, RSS growth %."""
        s = self.settings
        self._copy(NOOP, s.jobs)
        started = time.perf_counter()
        workers, counts = self._start_workers(s.processes, s.concurrency)
        try:
            total_s, steady_s, rss = self._wait_drained(s.jobs, workers, counts, started=started)
        finally:
            self._stop_workers(workers)
        with self._conn() as conn:
            done = self._succeeded(conn, NOOP)
        if done != s.jobs:
            raise RuntimeError(f"the workers reported {s.jobs} jobs done, the table {done}")
        self._reset()
        return total_s, steady_s, rss

    def _copy_finalized(self, count: int) -> None:
        """Rows as the sweeper would find them: succeeded, finalized, not yet swept."""
        row = (FILLER, CHANNEL, "{}", 1, "succeeded", 1, "now")
        with (
            self._conn() as conn,
            conn.cursor() as cursor,
            cursor.copy(self.queries["bench_copy_finalized"]) as copy,
        ):
            for _ in range(count):
                copy.write_row(row)
        with self._conn() as conn:
            conn.execute(self.queries["bench_analyze"])

    def _raw_loop(self, total: int) -> tuple[float, float]:
        """The baseline: one connection, claim 100, finish 100, until drained."""
        done = 0
        marks: dict[str, float] = {}
        with self._conn() as conn:
            started = time.perf_counter()
            while done < total:
                # Autocommit: each statement is its own transaction, no BEGIN/COMMIT trips.
                rows = conn.execute(
                    self.queries["bench_claim_raw"], {"channel": CHANNEL, "limit": RAW_BATCH}
                ).fetchall()
                conn.execute(self.queries["bench_finish_raw"], {"ids": [r[0] for r in rows]})
                done += len(rows)
                _mark(marks, done, total, time.perf_counter())
                if not rows:
                    break
            elapsed = time.perf_counter() - started
        return elapsed, marks["90"] - marks["10"]

    def _start_workers(
        self, processes: int, concurrency: int
    ) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
        """Start bench worker processes; the list their reported counts of jobs done go to."""
        argv = [
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
        env = {**os.environ, "ORCHESTRA_DSN": self.dsn}
        workers = [
            subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            for _ in range(processes)
        ]
        counts = [0] * processes
        for index, worker in enumerate(workers):
            threading.Thread(target=_follow, args=(worker, counts, index), daemon=True).start()
        return workers, counts

    def _stop_workers(self, workers: list[subprocess.Popen[bytes]]) -> None:
        for process in workers:
            process.terminate()
        for process in workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait_drained(
        self,
        total: int,
        workers: list[subprocess.Popen[bytes]],
        counts: list[int],
        *,
        started: float,
    ) -> tuple[float, float, float]:
        """Follow the jobs done that the workers report until every job is done.

        The workers print their count of succeeded jobs every POLL_S: counting
        rows in the table instead would load the database being measured.
        Returns the total and the 10 %-90 % seconds, and how much the workers'
        resident memory grew from the 10 % mark to the end, in percent.
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
                return now - started, marks["90"] - marks["10"], growth
            if now > deadline or not any(worker.poll() is None for worker in workers):
                raise RuntimeError(f"workers finished only {done} of {total} jobs")
            time.sleep(POLL_S)

    # -- latency ------------------------------------------------------------------

    def latency_run(self) -> list[Figure]:
        """Deferring at a low fixed rate to an idle worker: enqueue call to job start."""
        s = self.settings
        self.log(f"latency: {s.latency_jobs} jobs at {s.latency_rate:g}/s, then the baseline")
        workers, _ = self._start_workers(1, s.concurrency)
        try:
            self._wait_ready(1)
            self._paced(s.latency_jobs, lambda: self.latency.defer({"t0": time.time()}))
            with self._conn() as conn:
                wait_until(
                    lambda: self._succeeded(conn, LATENCY) >= s.latency_jobs,
                    timeout=60,
                    interval=POLL_S,
                    message="latency jobs did not finish within 60 s",
                )
                values = [
                    float(r[0])
                    for r in conn.execute(
                        self.queries["bench_results"], {"definition": LATENCY}
                    ).fetchall()
                ]
        finally:
            self._stop_workers(workers)
        self._reset()
        raw = self._raw_latency(s.latency_jobs)
        self._reset()
        figures = []
        for label, q, target in (("p50", 50, 3.0), ("p95", 95, None), ("p99", 99, 6.0)):
            figures.append(
                Figure(
                    f"latency {label}, defer to start",
                    "ms",
                    _percentile(values, q) * 1000,
                    _percentile(raw, q) * 1000,
                    higher_is_better=False,
                    target=target,
                )
            )
        return figures

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

    def _paced(self, count: int, action: Callable[[], object]) -> None:
        interval = 1 / self.settings.latency_rate
        next_at = time.perf_counter()
        for _ in range(count):
            action()
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def _raw_latency(self, count: int) -> list[float]:
        """A listener woken by NOTIFY claims each job; INSERT + NOTIFY to claim."""
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
                    rows = conn.execute(
                        self.queries["bench_claim_raw"], {"channel": CHANNEL, "limit": 100}
                    ).fetchall()
                    now = time.time()
                    values.extend(now - float(payload["t0"]) for _, payload in rows)

        thread = threading.Thread(target=listen, name="bench-raw-listener", daemon=True)
        thread.start()
        ready.wait(30)
        with self._conn() as conn:

            def insert() -> None:
                conn.execute(
                    self.queries["bench_insert_raw_notify"],
                    {
                        "definition": LATENCY,
                        "channel": CHANNEL,
                        "payload": json.dumps({"t0": time.time()}),
                        "notify_channel": channel,
                    },
                )

            self._paced(count, insert)
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
            Figure("idle worker CPU", "% core", cpu_share * 100, None, higher_is_better=False),
            Figure(
                "idle statements per interval",
                f"per {interval_ms} ms",
                per_interval,
                None,
                higher_is_better=False,
            ),
        ]


def _mark(marks: dict[str, float], done: int, total: int, now: float) -> None:
    """Remember when 10 % and 90 % of the jobs were done."""
    if "10" not in marks and done >= total * 0.1:
        marks["10"] = now
    if "90" not in marks and done >= total * 0.9:
        marks["90"] = now


def _follow(worker: subprocess.Popen[bytes], counts: list[int], index: int) -> None:
    """Keep ``counts[index]`` at the last count a bench worker printed."""
    assert worker.stdout is not None
    for line in worker.stdout:
        with contextlib.suppress(ValueError):
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


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def figures_as_json(figures: list[Figure], settings: Settings, schema: str) -> dict[str, Any]:
    """What ``--json`` prints."""
    return {
        "settings": attrs.asdict(settings),
        "schema": schema,
        "figures": [
            {
                "name": f.name,
                "unit": f.unit,
                "orchestra": round(f.orchestra, 3),
                "baseline": None if f.baseline is None else round(f.baseline, 3),
                "ratio": None if f.ratio is None else round(f.ratio, 3),
                "target_ratio": f.target if f.unit != "ms" else None,
                "target": f.target,
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
            sys.stdout.write(f"{worker.stats.succeeded}\n")
            sys.stdout.flush()
            time.sleep(POLL_S)

    threading.Thread(target=report, name="bench-report", daemon=True).start()
    worker.run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        _worker_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m orchestra._bench worker --schema S --concurrency N")
