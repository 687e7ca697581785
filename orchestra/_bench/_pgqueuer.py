"""PgQueuer on the bench's workloads: ``orchestra bench --peers pgqueuer``.

PgQueuer (the ``bench`` extra) is installed into a schema of its own,
``<bench schema>_pgqueuer``, which its connections have as their whole
``search_path`` (a startup parameter), so none of its objects can land in
``public``; the schema is dropped at the end whatever happens. It runs as its users run it:

* enqueue: ``Queries.enqueue`` once per job, then with lists of 1,000 jobs;
* processing: worker processes (``python -m orchestra._bench
  pgqueuer-worker``, one per ``--processes``), each a ``QueueManager`` with a
  no-op ``async def`` entrypoint on one asyncpg connection and the uvloop
  event loop, as PgQueuer's quick start and ``pgq run`` set it up (psycopg
  only when asyncpg is not installed: PgQueuer's psycopg driver holds its
  connection while it waits for notifications, so a query can wait for the
  next one, which shows in its latency). Its ``max_concurrent_tasks`` is
  ``--concurrency`` and its ``batch_size`` half of it, as orchestra claims
  half its slots per lane (PgQueuer refuses a cap below twice the batch, so at
  concurrency 1 the cap is 2);
* latency: jobs enqueued at ``--latency-rate`` to an idle worker whose job
  function reports the seconds since the enqueueing call.

A worker counts a job done once PgQueuer has written its log row (and
deleted it from the queue), as orchestra's worker counts a job once its
finish is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from importlib.metadata import version
from typing import Any, TypeVar

import psycopg
from pgqueuer.adapters.persistence.qb import (
    QueryBuilderEnvironment,
    QueryQueueBuilder,
    QuerySchedulerBuilder,
)
from pgqueuer.db import AsyncpgDriver, Driver, PsycopgDriver
from pgqueuer.domain.settings import DBSettings
from pgqueuer.models import Job, TracebackRecord
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries
from pgqueuer.types import JOB_STATUS, Channel
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestra import _db, _sql
from orchestra._bench._measure import (
    POLL_S,
    Drained,
    Settings,
    bench_queries,
    start_workers,
    stop_workers,
    wait_drained,
)
from orchestra.testing import wait_until

T = TypeVar("T")

#: PgQueuer's entrypoints: the same jobs as orchestra's definitions.
NOOP = "bench_noop"
LATENCY = "bench_latency"
PAYLOAD = b"{}"
#: Jobs per enqueue call when loading a processing run.
LOAD_BATCH = 10_000


def driver_name() -> str:
    """The driver PgQueuer runs on here: asyncpg, its default, when installed."""
    try:
        import asyncpg  # noqa: F401, PLC0415
    except ImportError:
        return "psycopg"
    return "asyncpg"


def conninfo(dsn: str, schema: str) -> str:
    """``dsn`` with ``schema`` as the whole search_path, so PgQueuer's objects live there."""
    params = conninfo_to_dict(dsn)
    options = str(params.get("options") or "")
    params["options"] = f"{options} -csearch_path={schema}".strip()
    return make_conninfo("", **params)


@contextlib.asynccontextmanager
async def connect(dsn: str, schema: str) -> AsyncIterator[Driver]:
    """A PgQueuer driver on one new connection whose search_path is ``schema`` alone."""
    if driver_name() == "psycopg":
        async with await psycopg.AsyncConnection.connect(
            conninfo(dsn, schema), autocommit=True
        ) as connection:
            yield PsycopgDriver(connection)
        return
    import asyncpg  # noqa: PLC0415

    # asyncpg reads URIs only: the libpq parameters it knows are passed one by one
    # (and it reads the PG* environment and ~/.pgpass itself, as libpq does).
    params = conninfo_to_dict(dsn)
    kwargs: dict[str, Any] = {k: params[k] for k in ("host", "user", "password") if k in params}
    if "port" in params:
        kwargs["port"] = int(str(params["port"]))
    if "dbname" in params:
        kwargs["database"] = params["dbname"]
    if "sslmode" in params:
        kwargs["ssl"] = params["sslmode"]
    connection = await asyncpg.connect(**kwargs, server_settings={"search_path": schema})
    try:
        yield AsyncpgDriver(connection)
    finally:
        await connection.close()


def knobs(concurrency: int) -> tuple[int, int]:
    """PgQueuer's (batch_size, max_concurrent_tasks) for orchestra's concurrency."""
    batch_size = max(1, concurrency // 2)
    return batch_size, max(concurrency, 2 * batch_size)


def _settings(channel: str) -> DBSettings:
    # Every name explicit: PGQUEUER_* variables of the environment must not move
    # the tables away from the names bench.sql reads. The channel is per run, so
    # two benches on one database do not wake each other's workers.
    return DBSettings(
        prefix="",
        db_schema=None,
        channel=Channel(channel),
        queue_table="pgqueuer",
        queue_table_log="pgqueuer_log",
        statistics_table="pgqueuer_statistics",
    )


@dataclasses.dataclass
class _CountingQueries(Queries):
    """PgQueuer's queries, counting the successes whose log row is written."""

    succeeded: int = 0

    async def log_jobs(
        self, job_status: list[tuple[Job, JOB_STATUS, TracebackRecord | None]]
    ) -> None:
        await super().log_jobs(job_status)
        self.succeeded += sum(1 for _, status, _ in job_status if status == "successful")


def _queries(driver: Driver, channel: str) -> _CountingQueries:
    settings = _settings(channel)
    return _CountingQueries(
        driver,
        qbe=QueryBuilderEnvironment(settings),
        qbq=QueryQueueBuilder(settings),
        qbs=QuerySchedulerBuilder(settings),
    )


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop, the event loop ``pgq run`` uses where it is installed."""
    try:
        import uvloop  # noqa: PLC0415 (a PgQueuer dependency, not orchestra's)
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


class PgQueuerPeer:
    """PgQueuer in ``schema``, measured on the bench's workloads."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        settings: Settings,
        *,
        log: Callable[[str], None],
    ) -> None:
        self.dsn = dsn
        self.schema = _sql.validate_schema_name(schema)
        self.settings = settings
        self.log = log
        self.channel = f"ch_{schema}"
        self.queries = bench_queries(self.schema)
        self.batch_size, self.max_concurrent_tasks = knobs(settings.concurrency)
        #: Jobs the last processing run logged as successful.
        self.processed = 0

    def describe(self) -> dict[str, Any]:
        """How PgQueuer ran (for ``--json``)."""
        return {
            "version": version("pgqueuer"),
            "schema": self.schema,
            "driver": driver_name(),
            "processes": self.settings.processes,
            "batch_size": self.batch_size,
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "processed": self.processed,
        }

    def install(self) -> None:
        """Create the schema and install PgQueuer's tables, types and trigger in it."""
        with _db.connect(self.dsn) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))

        async def install() -> None:
            async with connect(self.dsn, self.schema) as driver:
                await _queries(driver, self.channel).install()

        _run(install())

    def uninstall(self) -> None:
        """Drop the schema and everything PgQueuer put in it."""
        with _db.connect(self.dsn) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )

    def _reset(self) -> None:
        with _db.connect(self.dsn) as conn:
            conn.execute(self.queries["bench_pgqueuer_reset"])

    # -- enqueue ----------------------------------------------------------------

    def enqueue(self, single: int, jobs: int, batch: int) -> tuple[float, float]:
        """Jobs per second: one ``enqueue`` per job; then lists of ``batch`` jobs."""
        self.log(f"enqueue through PgQueuer {version('pgqueuer')}")

        async def measure() -> tuple[float, float]:
            async with connect(self.dsn, self.schema) as driver:
                queries = _queries(driver, self.channel)
                await queries.enqueue(NOOP, PAYLOAD)  # connected outside the timing
                started = time.perf_counter()
                for _ in range(single):
                    await queries.enqueue(NOOP, PAYLOAD)
                single_rate = single / (time.perf_counter() - started)
                await driver.execute(self.queries["bench_pgqueuer_reset"].decode())

                names, priorities = [NOOP] * batch, [0] * batch
                payloads: list[bytes | None] = [PAYLOAD] * batch
                started = time.perf_counter()
                for offset in range(0, jobs, batch):
                    size = min(batch, jobs - offset)
                    await queries.enqueue(names[:size], payloads[:size], priorities[:size])
                batch_rate = jobs / (time.perf_counter() - started)
                await driver.execute(self.queries["bench_pgqueuer_reset"].decode())
                return single_rate, batch_rate

        return _run(measure())

    async def _load(self, entrypoint: str, count: int) -> None:
        async with connect(self.dsn, self.schema) as driver:
            queries = _queries(driver, self.channel)
            for offset in range(0, count, LOAD_BATCH):
                size = min(LOAD_BATCH, count - offset)
                await queries.enqueue([entrypoint] * size, [PAYLOAD] * size, [0] * size)

    # -- processing -------------------------------------------------------------------

    def _worker_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "orchestra._bench",
            "pgqueuer-worker",
            "--schema",
            self.schema,
            "--channel",
            self.channel,
            "--batch-size",
            str(self.batch_size),
            "--max-concurrent-tasks",
            str(self.max_concurrent_tasks),
        ]

    def processing(self) -> Drained:
        """Load the jobs, drain them with PgQueuer worker processes."""
        s = self.settings
        self.log(
            f"processing through PgQueuer: {s.processes} worker process(es), batch size "
            f"{self.batch_size}, max_concurrent_tasks {self.max_concurrent_tasks}"
        )
        _run(self._load(NOOP, s.jobs))
        with _db.connect(self.dsn) as conn:
            conn.execute(self.queries["bench_pgqueuer_analyze"])
        started = time.perf_counter()
        workers, counts = start_workers(
            self._worker_argv(), s.processes, {"ORCHESTRA_DSN": self.dsn}
        )
        try:
            drained = wait_drained(s.jobs, workers, counts, started=started)
        finally:
            stop_workers(workers)
        with _db.connect(self.dsn) as conn:
            row = conn.execute(self.queries["bench_pgqueuer_done"], {"entrypoint": NOOP}).fetchone()
        logged, queued = (int(row[0]), int(row[1])) if row else (0, 0)
        if logged != s.jobs or queued:
            raise RuntimeError(
                f"PgQueuer's workers reported {sum(counts)} jobs done; its log holds "
                f"{logged} successes and its queue {queued} jobs, of {s.jobs}"
            )
        self.processed = logged
        self._reset()
        return drained

    # -- latency ------------------------------------------------------------------

    def latency(self) -> list[float]:
        """Seconds from each enqueueing call to the start of its job, at the bench's rate."""
        s = self.settings
        self.log(f"latency through PgQueuer: {s.latency_jobs} jobs at {s.latency_rate:g}/s")
        latencies: list[float] = []
        workers, counts = start_workers(
            self._worker_argv(), 1, {"ORCHESTRA_DSN": self.dsn}, latencies
        )
        try:
            # Ready once it has run a job: its listener is up before its first dequeue.
            _run(self._load(NOOP, 1))
            wait_until(
                lambda: counts[0] >= 1,
                timeout=60,
                interval=POLL_S,
                message="the PgQueuer worker did not start within 60 s",
            )
            _run(self._paced_latency_jobs())
            wait_until(
                lambda: len(latencies) >= s.latency_jobs,
                timeout=60,
                interval=POLL_S,
                message="PgQueuer's latency jobs did not start within 60 s",
            )
        finally:
            stop_workers(workers)
        self._reset()
        return latencies

    async def _paced_latency_jobs(self) -> None:
        s = self.settings
        interval = 1 / s.latency_rate
        async with connect(self.dsn, self.schema) as driver:
            queries = _queries(driver, self.channel)
            next_at = time.perf_counter()
            for _ in range(s.latency_jobs):
                await queries.enqueue(LATENCY, json.dumps({"t0": time.time()}).encode())
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


# -- the worker process ----------------------------------------------------------------------


def worker_main(argv: list[str]) -> None:
    """``python -m orchestra._bench pgqueuer-worker``: a PgQueuer worker of the bench."""
    parser = argparse.ArgumentParser(prog="orchestra._bench pgqueuer-worker")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-concurrent-tasks", type=int, required=True)
    options = parser.parse_args(argv)
    _run(
        _work(
            os.environ["ORCHESTRA_DSN"],
            options.schema,
            options.channel,
            batch_size=options.batch_size,
            max_concurrent_tasks=options.max_concurrent_tasks,
        )
    )


async def _work(
    dsn: str, schema: str, channel: str, *, batch_size: int, max_concurrent_tasks: int
) -> None:
    async with connect(dsn, schema) as driver:
        queries = _queries(driver, channel)
        manager = QueueManager(queries, channel=Channel(channel))
        latencies: collections.deque[float] = collections.deque()

        @manager.entrypoint(NOOP)
        async def noop_job(job: Job) -> None:
            """The no-op job."""

        @manager.entrypoint(LATENCY)
        async def latency_job(job: Job) -> None:
            latencies.append(time.time() - json.loads(job.payload or b"{}")["t0"])

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, manager.shutdown.set)

        def report() -> None:
            # The bench follows progress here rather than by counting rows.
            while True:
                while latencies:
                    sys.stdout.write(f"latency {latencies.popleft()}\n")
                sys.stdout.write(f"{queries.succeeded}\n")
                sys.stdout.flush()
                time.sleep(POLL_S)

        threading.Thread(target=report, name="bench-report", daemon=True).start()
        await manager.run(batch_size=batch_size, max_concurrent_tasks=max_concurrent_tasks)
