"""The Worker daemon: claim jobs of one channel, run them, record every attempt.

Loop, in short:

* the slots form one lane, or two from concurrency 100 (:mod:`._lanes`); a
  lane claims up to its free slots in one statement (never more), and writes
  the finishes of its jobs together with the claim of as many new jobs as
  they free, in one transaction;
* a full claim means there may be more: the lane claims again with its next
  finishes; a short one means the channel is drained: claim nothing more
  until a NOTIFY, a freed slot of a limited definition, or
  ``process_interval_ms`` (the polling fallback);
* ``def`` functions run start to end on job threads (:class:`ThreadRunner`),
  ``async def`` functions (and child-process attempts) in a task each; either
  way the outcome, a :class:`Finish`, goes to the job's lane, and its slot is
  free again once the finish is committed (and the job's callbacks ran);
* a heartbeat task refreshes the worker row and extends the leases of the jobs
  still running, in one statement;
* stop: claim nothing more, let in-flight jobs finish within the grace period,
  record the rest as interrupted (they will be retried), flush, deregister.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import attrs
import psycopg
from psycopg_pool import AsyncConnectionPool

from orchestra import _converter, _db, _migrate, events
from orchestra._backoff import milliseconds
from orchestra._config import Config
from orchestra._daemon import Daemon
from orchestra._definition import (
    CHANNEL_RE,
    JobContext,
    JobDefinition,
    _check_int,
    _check_name,
)
from orchestra._worker import _attempts, _lanes
from orchestra._worker._attempts import Claimed, Finish
from orchestra._worker._callbacks import run_callbacks
from orchestra._worker._children import ChildPool, ChildRequest
from orchestra._worker._lanes import MAX_BATCH, Lane
from orchestra._worker._listener import Listener
from orchestra._worker._threads import ThreadRunner
from orchestra.errors import ConfigurationError, PayloadError

logger = logging.getLogger("orchestra.worker")

PROCESS_INTERVAL_MS_DEFAULT = 1_000
SHUTDOWN_GRACE_MS_DEFAULT = 30_000
HEARTBEAT_INTERVAL_MS_DEFAULT = 10_000
UNKNOWN_DEFINITION_DELAY_MS_DEFAULT = 5_000
ERROR_BACKOFF_MIN_S = 0.2
ERROR_BACKOFF_MAX_S = 15.0
#: How often a worker refreshes last_heartbeat_at of the definitions it carries.
DEFINITION_HEARTBEAT_S = 60.0
#: How long a stopping worker tries to record its last finishes, and then
#: waits for their callbacks.
FLUSH_GRACE_S = 10.0
#: Claims refused in a row by the running-resource-key index before the
#: worker backs off as for a database error (each retry normally succeeds).
KEY_CONFLICT_RETRIES = 3


def _retry_delay_s(failures: int) -> float:
    """The wait before retrying after ``failures`` failures in a row (>= 1): doubling, capped."""
    return min(ERROR_BACKOFF_MAX_S, ERROR_BACKOFF_MIN_S * 2.0 ** (failures - 1))


@attrs.define
class WorkerStats:
    """Counters since the worker started (read them from any thread)."""

    claim_queries: int = 0
    #: Heartbeat statements (worker row and leases; definitions every minute).
    heartbeat_queries: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    fenced: int = 0
    max_running: int = 0


@attrs.define(eq=False)
class _Running:
    """A claimed job, from its claim until its finish is committed and its callbacks ran."""

    job: Claimed
    lane: Lane
    #: time.monotonic() when the attempt started.
    started: float
    #: The task of an ``async def`` or child-process attempt; None on a job thread.
    task: asyncio.Task[None] | None = None
    #: Set when a job-thread attempt runs past attempt_timeout_ms (ctx.should_stop).
    cut: threading.Event | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    #: Its Finish is with its lane: the job only waits for the commit.
    submitted: bool = False


class Worker(Daemon):
    """Claims and runs the jobs of one channel.

    Args:
        config: the queue's Config; its registered definitions are what this worker can run.
        channel: the channel to serve.
        concurrency: most jobs running at once (>= 1); by default 1, or ``processes``.
        processes: run job functions in this many child processes instead of
            threads (CPU-bound work). Functions must be importable module-level
            callables; a crash of a child fails that attempt only (it is retried
            as any failure) and the child is replaced; ``attempt_timeout_ms``
            terminates a stuck child.
        name: shown in events, logs and the worker table (``<name>-worker``).
        event_handler: a callable, or several, receiving :mod:`orchestra.events`.
        process_interval_ms: polling interval when idle (NOTIFY usually wakes sooner).
        shutdown_grace_ms: how long a graceful stop waits for running jobs.
        heartbeat_interval_ms: how often leases are extended; by default 10 s or
            a third of the shortest lock interval of the channel's definitions.
        listen_notify: False for pure polling (PgBouncer in transaction mode).
        unknown_definition_delay_ms: how long a job of a definition this worker
            does not carry is handed back for before another worker may claim it.
    """

    role = "worker"

    def __init__(
        self,
        config: Config,
        *,
        channel: str = "_default",
        concurrency: int | None = None,
        processes: int | None = None,
        name: str = "anon",
        event_handler: events.EventHandler | Iterable[events.EventHandler] | None = None,
        process_interval_ms: int | dt.timedelta = PROCESS_INTERVAL_MS_DEFAULT,
        shutdown_grace_ms: int | dt.timedelta = SHUTDOWN_GRACE_MS_DEFAULT,
        heartbeat_interval_ms: int | dt.timedelta | None = None,
        listen_notify: bool = True,
        unknown_definition_delay_ms: int | dt.timedelta = UNKNOWN_DEFINITION_DELAY_MS_DEFAULT,
    ) -> None:
        super().__init__(name=name, event_handler=event_handler)
        if not isinstance(config, Config):
            raise ConfigurationError(
                "config", f"must be an orchestra Config, not {type(config).__name__}"
            )
        self.config = config
        self.channel = _check_name(channel, "channel", pattern=CHANNEL_RE)
        if processes is not None:
            _check_int(processes, "processes", 1, 256)
        if concurrency is None:
            concurrency = processes or 1
        _check_int(concurrency, "concurrency", 1, 10_000)
        if processes is not None and concurrency != processes:
            # A claimed job waiting for a busy child would hold its lease and
            # delay other workers for nothing.
            raise ConfigurationError(
                "concurrency",
                f"with processes={processes} each child runs one job: leave concurrency "
                f"unset or equal to processes, got {concurrency}",
            )
        self.concurrency = concurrency
        self.processes = processes
        self.process_interval_ms = milliseconds(process_interval_ms, "process_interval_ms") or 0
        if self.process_interval_ms < 10:
            raise ConfigurationError("process_interval_ms", "must be at least 10 ms")
        self.shutdown_grace_ms = milliseconds(shutdown_grace_ms, "shutdown_grace_ms") or 0
        self._heartbeat_interval_ms = milliseconds(
            heartbeat_interval_ms, "heartbeat_interval_ms", allow_none=True
        )
        if self._heartbeat_interval_ms is not None and self._heartbeat_interval_ms < 50:
            raise ConfigurationError("heartbeat_interval_ms", "must be at least 50 ms")
        self.listen_notify = bool(listen_notify)
        self.unknown_definition_delay_ms = (
            milliseconds(unknown_definition_delay_ms, "unknown_definition_delay_ms") or 0
        )
        self.stats = WorkerStats()
        self.worker_id: int | None = None
        self._running: dict[int, _Running] = {}
        self._lanes = _lanes.split(concurrency)
        #: Statements of the lanes in flight, and the callbacks of committed finishes.
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set whenever a lane's statement ends (the stop waits on it).
        self._lane_done = asyncio.Event()
        #: A lane is claiming with no finish to write: one at a time, so an idle
        #: worker's poll or wake-up costs one statement, not one per lane.
        self._lone_claim = False
        self._kick_scheduled = False
        #: Shutting down (after a stop, or after a failure): no more claims.
        self._closing = False
        self._maybe_more = True
        #: Notifications received: a claim that came back short while one
        #: arrived may have missed its job, and must not clear _maybe_more.
        self._notifications = 0
        #: The rate-limited backlog's next release, when sooner than the poll.
        self._release_wait_s: float | None = None
        #: This channel's limited definitions and their shortest release
        #: interval, read at the start (as the definitions are written then).
        self._limited: tuple[list[str], float] = ([], 0.0)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._threads: ThreadRunner[Finish] | None = None
        self._children: ChildPool | None = None
        self._listener: Listener | None = None
        self._error_streak = 0
        self._key_conflicts = 0

    def _in_flight(self) -> int:
        return len(self._running)

    @property
    def heartbeat_interval_ms(self) -> int:
        """The effective heartbeat interval."""
        if self._heartbeat_interval_ms is not None:
            return self._heartbeat_interval_ms
        locks = [d.lock_interval_ms for d in self._definitions() if d.channel == self.channel]
        return min([HEARTBEAT_INTERVAL_MS_DEFAULT, *(lock // 3 for lock in locks)])

    def _definitions(self) -> list[JobDefinition[Any]]:
        return list(self.config.definitions.values())

    # -- start and stop -------------------------------------------------------

    async def _main(self) -> None:
        dsn = self.config.dsn
        await asyncio.to_thread(self._start_up)
        self._limited = self._limited_definitions()

        self._pool = AsyncConnectionPool(
            dsn,
            # A statement per lane, the heartbeat, the callbacks' reads.
            min_size=len(self._lanes),
            max_size=len(self._lanes) + 2,
            kwargs=dict(_db.CONNECT_KWARGS),
            open=False,
            name=f"orchestra-{self.daemon_name}",
        )
        await self._pool.open(wait=True, timeout=30)
        self._threads = ThreadRunner(
            self.concurrency,
            loop=asyncio.get_running_loop(),
            on_done=self._threads_done,
            name=f"orchestra-{self.name}",
        )
        if self.processes is not None:
            self._children = ChildPool(self.processes, name=f"orchestra-{self.name}")
            # Started before claiming: a child takes a fraction of a second to
            # import the app, which must not count against the first jobs.
            await asyncio.to_thread(self._children.start)
        side_tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="orchestra-heartbeat"),
        ]
        if self.listen_notify:
            self._listener = Listener(
                dsn,
                self.config.notify_channel,
                self.channel,
                on_wakeup=self._on_notify,
                on_lost=lambda error: self._emit(events.WorkerListenLost, error=error),
                on_restored=lambda: self._emit(events.WorkerListenRestored),
            )
            side_tasks.append(asyncio.create_task(self._listener.run(), name="orchestra-listener"))
        self._emit(events.DaemonStarted, host=self.host, pid=self.pid)
        self._ready()
        handed_back = 0
        error: str | None = None
        try:
            await self._wake_loop()
            handed_back = await self._drain()
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await self._shutdown(side_tasks)
            self._emit(events.DaemonStopped, error=error, handed_back=handed_back)

    def _registration(self) -> dict[str, Any]:
        """The parameters of this worker's row in the worker table."""
        return {
            "name": self.name,
            "role": "worker",
            "host": self.host,
            "pid": self.pid,
            "channel": self.channel,
            "concurrency": self.concurrency,
            "secret": self.secret,
        }

    async def _register(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Insert this worker's row again (after it was reaped); return its id."""
        cursor = await conn.execute(self.config.queries["worker_register"], self._registration())
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    def _start_up(self) -> None:
        """Check the schema, write the definitions, register: one connection, in a thread.

        The connection retries with backoff and raises a readable error if the
        server is down; the checks are sync code and run once, so the thread
        keeps the event loop free.
        """
        with _db.connect(self.config.dsn, attempts=self.config.connect_attempts) as conn:
            _migrate.check(conn, self.config.schema)
            for definition in self._definitions():
                definition.upsert(conn)
            row = conn.execute(
                self.config.queries["worker_register"], self._registration()
            ).fetchone()
            assert row is not None
            self.worker_id = int(row[0])

    async def _drain(self) -> int:
        """Wait for running jobs within the grace period; interrupt the rest.

        An interrupted attempt counts and its job is retried. The thread of an
        interrupted ``def`` attempt runs on until the function returns; what
        it returns then is discarded.
        """
        if self._children is not None:
            self._children.request_stop()  # ctx.should_stop in the children
        deadline = time.monotonic() + self.shutdown_grace_ms / 1000
        while self._running and not self._force_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._sleep_or_wake(min(remaining, 0.1))
        leftovers = [r for r in self._running.values() if not r.submitted]
        tasks = []
        for running in leftovers:
            if running.task is not None:
                running.task.cancel()  # the task records the interruption
                tasks.append(running.task)
            else:
                if running.timer is not None:
                    running.timer.cancel()
                self._submit(running, _attempts.interrupted(running.job, running.started))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(leftovers)

    async def _shutdown(self, side_tasks: list[asyncio.Task[None]]) -> None:
        # Also reached when _main failed without a stop: claim nothing more.
        self._closing = True
        deadline = time.monotonic() + FLUSH_GRACE_S
        while any(lane.busy for lane in self._lanes):
            self._lane_done.clear()
            self._kick_all()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lane_done.wait(), remaining)
        if any(lane.busy for lane in self._lanes):
            logger.warning(
                "%s: could not record %d finished attempt(s) before stopping; "
                "their leases will expire and the jobs will be rescued",
                self.daemon_name,
                sum(1 for r in self._running.values() if r.submitted),
            )
        if self._tasks:
            # Statements still retrying are given up; callbacks may finish.
            await asyncio.wait(self._tasks, timeout=max(0.0, deadline - time.monotonic()))
            left = list(self._tasks)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
        if self._pool is not None:
            if self.worker_id is not None:
                try:
                    async with self._pool.connection(timeout=5) as conn:
                        await conn.execute(
                            self.config.queries["worker_delete"],
                            {"worker_id": self.worker_id, "secret": self.secret},
                        )
                except Exception:
                    logger.warning(
                        "%s: could not delete the worker row", self.daemon_name, exc_info=True
                    )
            await self._pool.close()
        if self._children is not None:
            await self._children.close()
        if self._threads is not None:
            # Threads of sync jobs that ignored the stop keep running until they
            # return; their jobs were already recorded as interrupted.
            self._threads.close()

    # -- claiming ---------------------------------------------------------------

    def _on_notify(self) -> None:
        self._maybe_more = True
        self._notifications += 1
        # Claim right here, on the listener's turn of the loop, rather than a
        # turn later in the wake loop: this is the idle worker's latency path.
        # The wake-up still resets the polling timer.
        self._kick_all()
        if self._wakeup is not None:
            self._wakeup.set()

    def _limited_definitions(self) -> tuple[list[str], float]:
        """This channel's rate- or concurrency-limited definitions; the shortest interval (s)."""
        limited = [
            d
            for d in self._definitions()
            if d.channel == self.channel
            and (d.release_interval_ms > 0 or d.max_concurrency is not None)
        ]
        intervals = [d.release_interval_ms for d in limited if d.release_interval_ms > 0]
        return [d.name for d in limited], (min(intervals) / 1000 if intervals else 0.0)

    async def _wake_loop(self) -> None:
        """Until the stop: let the lanes claim on a NOTIFY, and poll every interval.

        Under load the lanes claim with their finishes and need no wake-up;
        this loop only starts claims of idle lanes.
        """
        interval_s = self.process_interval_ms / 1000
        while not self.stopping:
            if self._maybe_more:
                self._kick_all()
            sleep_s = interval_s
            if self._release_wait_s is not None:
                sleep_s, self._release_wait_s = min(interval_s, self._release_wait_s), None
            if not await self._sleep_or_wake(sleep_s):
                self._maybe_more = True  # nothing woke us: the polling fallback looks again

    def _kick_all(self) -> None:
        self._kick_scheduled = False
        for lane in self._lanes:
            self._kick(lane)

    def _schedule_kick(self) -> None:
        """Kick the lanes once the loop has run what is ready: finishes that
        arrive in the same loop iteration go out in one statement."""
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick_all)

    def _kick(self, lane: Lane) -> None:
        """Start the lane's next statement if it has finishes to write or slots to fill."""
        if lane.writing:
            return
        wait = 0.0 if self._no_more_claims else lane.hold_back(time.monotonic())
        if wait:
            if lane.flush_timer is None:
                lane.flush_timer = asyncio.get_running_loop().call_later(
                    wait, self._flush_due, lane
                )
            return
        if lane.flush_timer is not None:
            lane.flush_timer.cancel()
            lane.flush_timer = None
        batch = lane.pending[:MAX_BATCH]
        claim = 0
        if self._maybe_more and not self._no_more_claims:
            # The batch's jobs hold their slots until the commit, where the
            # claim takes them over; except a job with callbacks, which keeps
            # its slot until they return.
            claim = lane.free + sum(1 for f in batch if not self._has_callbacks(f.definition))
        if not batch:
            if claim <= 0 or self._lone_claim:
                return
            self._lone_claim = True
        del lane.pending[: len(batch)]
        lane.writing = True
        task = asyncio.create_task(
            self._lane_write(lane, batch, claim), name=f"orchestra-lane-{lane.index}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def _no_more_claims(self) -> bool:
        return self.stopping or self._closing

    def _flush_due(self, lane: Lane) -> None:
        lane.flush_timer = None
        self._kick(lane)

    def _has_callbacks(self, name: str) -> bool:
        definition = self.config.definitions.get(name)
        return definition is not None and definition.has_callbacks

    async def _lane_write(self, lane: Lane, batch: list[Finish], claim: int) -> None:
        """A lane statement: record ``batch``, claim up to ``claim`` jobs; retried on errors.

        After an error that leaves the outcome unknown (the connection broke
        after the statement was sent), the worker finds out what committed
        before acting: recorded finishes are reported as such, jobs the claim
        took are run, and only what is not in the database is written again.
        """
        lone = not batch
        rows: list[tuple[Any, ...]] = []
        claimed: list[Claimed] = []
        notifications = self._notifications
        to_write = batch
        try:
            while True:
                if self._no_more_claims:
                    claim = 0
                if not to_write and not claim:
                    break
                claim_id = _lanes.new_claim_id() if claim else None
                try:
                    written, got = await self._lane_statement(to_write, claim, claim_id)
                except psycopg.errors.UniqueViolation as exc:
                    # Another worker started a job of the same resource key
                    # between our snapshot and our UPDATE: the index refused
                    # our claim, and the finishes with it (nothing committed).
                    # Write again: the new snapshot sees the winner.
                    self._key_conflicts += 1
                    if self._key_conflicts > KEY_CONFLICT_RETRIES:
                        await self._database_error("claim", exc)
                    continue
                except psycopg.DataError as exc:
                    # Refused by the database: nothing committed.
                    if not to_write:
                        await self._database_error("claim", exc)
                        break  # given up: the next kick claims again
                    # The data of some row is refused (not the connection):
                    # write the rows one by one so that one bad row cannot
                    # block the rest; claim with the next statement.
                    written, to_write = await self._write_one_by_one(to_write, exc)
                    rows.extend(written)
                    claim = 0
                    if to_write:  # the connection broke on the way: as below
                        to_write = await self._settle(to_write, None, rows, claimed) or []
                    continue
                except Exception as exc:  # connection lost, server restarting ...
                    # The first error goes straight to finding out: a terminated
                    # connection is replaced at once, and the jobs a lost claim
                    # took wait meanwhile, unstarted and with their leases
                    # running. Errors in a row back off first.
                    await self._database_error(
                        "finish" if to_write else "claim", exc, wait=self._error_streak > 0
                    )
                    unsettled = await self._settle(to_write, claim_id, rows, claimed)
                    if unsettled is None:
                        break  # a stopping worker's claim alone: its jobs' leases will expire
                    # The claim is not repeated here: if it committed, it took
                    # what there was; the next kick claims again.
                    to_write, claim = unsettled, 0
                    self._maybe_more = True
                    continue
                self._error_streak = 0
                self._key_conflicts = 0
                rows.extend(written)
                claimed.extend(got)
                break
            _lanes.apply_committed(batch, rows)
            self._committed(batch)
            # Started before the guarded claim, which may back off on an error:
            # a claimed job must not wait unstarted, and unheartbeated, meanwhile.
            for job in claimed:
                self._start_job(job, lane)
            guarded: list[Claimed] = []
            if claim and len(claimed) < claim and not self._no_more_claims:
                guarded = await self._claim_limited(claim - len(claimed))
            for job in guarded:
                self._start_job(job, lane)
            if claim:
                self._maybe_more = (
                    len(claimed) + len(guarded) >= claim or self._notifications != notifications
                )
        finally:
            lane.writing = False
            if lone:
                self._lone_claim = False
            self._lane_done.set()
        if self._maybe_more or lane.pending:
            self._kick_all()

    async def _settle(
        self,
        batch: list[Finish],
        claim_id: str | None,
        rows: list[tuple[Any, ...]],
        claimed: list[Claimed],
    ) -> list[Finish] | None:
        """After a statement whose outcome is unknown: add what committed of it
        to ``rows`` and ``claimed``; return the finishes still to write (fenced
        when written again, so at worst refused), or None if we gave up."""
        found = await self._find_out(batch, claim_id)
        if found is None:
            return None
        recorded, recovered = found
        if recorded or recovered:
            self._error_streak = 0  # the statement committed: the database works
        rows.extend(recorded)
        claimed.extend(recovered)
        done = {row[0] for row in recorded}
        return [f for f in batch if f.job_id not in done]

    async def _find_out(
        self, batch: list[Finish], claim_id: str | None
    ) -> tuple[list[tuple[Any, ...]], list[Claimed]] | None:
        """What committed of a statement whose reply was lost; None if we gave up.

        Retried with the usual backoff until the database answers. A stopping
        worker gives up on a claim alone (the lease of what it took expires and
        the jobs are rescued); finishes are looked up until the stop's flush
        deadline cancels the lane.
        """
        if not batch and claim_id is None:
            return [], []
        assert self._pool is not None
        while True:
            try:
                found = await _lanes.find_out(
                    self._pool,
                    self.config.queries,
                    batch,
                    claim_id=claim_id,
                    worker_id=self.worker_id or 0,
                )
            except Exception as exc:
                if not batch and self._no_more_claims:
                    return None
                await self._database_error("finish" if batch else "claim", exc)
            else:
                return found

    async def _lane_statement(
        self, batch: list[Finish], claim: int, claim_id: str | None
    ) -> tuple[list[tuple[Any, ...]], list[Claimed]]:
        """Finish ``batch``, release dependents and claim ``claim`` jobs: one round trip.

        One transaction (decision 0015): the finished jobs hand their slots to
        the claimed ones at the commit, so the worker never holds more claims
        than its concurrency. A claim alone is a single autocommit statement.
        """
        assert self._pool is not None
        queries = self.config.queries
        statements = _lanes.lane_statements(
            batch,
            claim,
            channel=self.channel,
            worker_id=self.worker_id or 0,
            worker_name=self.daemon_name,
            notify_channel=self.config.notify_channel,
            finished_channel=self.config.finished_channel,
            claim_id=claim_id,
        )
        if claim:
            self.stats.claim_queries += 1
        return await _lanes.execute(self._pool, queries, statements)

    async def _write_one_by_one(
        self, batch: list[Finish], first_error: BaseException
    ) -> tuple[list[tuple[Any, ...]], list[Finish]]:
        """Write ``batch`` a finish at a time after the database refused its data.

        Returns the rows written and the finishes still to write: those after
        an error that was not about the data (the connection broke), which the
        caller handles as for any batch.
        """
        if len(batch) == 1:
            finish = batch[0]
            finish.dropped = True
            logger.error(
                "job %d attempt %d: its finish was refused by the database (%s); the lease "
                "will expire and the job will be rescued",
                finish.job_id,
                finish.attempt,
                first_error,
            )
            return [], []
        rows: list[tuple[Any, ...]] = []
        for index, finish in enumerate(batch):
            try:
                rows.extend((await self._lane_statement([finish], 0, None))[0])
            except psycopg.DataError as exc:
                rows.extend((await self._write_one_by_one([finish], exc))[0])
            except Exception as exc:
                await self._database_error("finish", exc)
                return rows, batch[index:]
        return rows, []

    async def _claim_limited(self, limit: int) -> list[Claimed]:
        """The guarded claim of rate- or concurrency-limited definitions (decision 0009).

        Lock the limited definitions, then claim in a fresh snapshot. Errors
        are reported and the claim given up: the next statement tries again.
        A connection error after the claim was sent is looked up first, as in
        :meth:`_lane_write`: what it took is run.
        """
        definitions, release_s = self._limited
        if not definitions:
            return []
        assert self._pool is not None
        self.stats.claim_queries += 1
        claim_id = _lanes.new_claim_id()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    self.config.queries["definition_lock_limited"], {"definitions": definitions}
                )
                locked = [row[0] for row in await cursor.fetchall()]
                if not locked:
                    return []
                cursor = await conn.execute(
                    self.config.queries["job_claim_limited"],
                    {
                        "definitions": locked,
                        "limit": limit,
                        "worker_id": self.worker_id,
                        "claim_id": claim_id,
                    },
                )
                rows = await cursor.fetchall()
        except psycopg.Error as exc:
            await self._database_error("claim", exc)
            if isinstance(exc, psycopg.DatabaseError) and exc.sqlstate is not None:
                return []  # refused by the server: nothing committed
            found = await self._find_out([], claim_id)
            return [] if found is None else found[1]
        except Exception as exc:
            await self._database_error("claim", exc)
            return []
        if rows and release_s:
            # A rate-limited backlog: the next release is due one interval on.
            self._release_wait_s = release_s
            if self._wakeup is not None:
                self._wakeup.set()
        return [Claimed(*row) for row in rows]

    def _start_job(self, job: Claimed, lane: Lane) -> None:
        self.stats.claimed += 1
        self._emit(
            events.WorkerJobClaimed,
            job_id=job.id,
            definition=job.definition,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            queue_wait_ms=max(0, round((job.started_at - job.run_at).total_seconds() * 1000)),
            trace_context=job.trace_context,
        )
        stale = self._running.get(job.id)
        if stale is not None:
            # Our earlier attempt of this job lost its lease (heartbeats failed
            # for a lease interval) and the job was rescued and claimed again:
            # that attempt's finish will be fenced; stop counting it.
            stale.lane.running -= 1
            if not stale.submitted:
                stale.lane.unfinished -= 1
                stale.submitted = True
        running = _Running(job, lane, time.monotonic())
        self._running[job.id] = running
        lane.running += 1
        lane.unfinished += 1
        self.stats.max_running = max(self.stats.max_running, len(self._running))
        definition = self.config.definitions.get(job.definition)
        if self._no_more_claims:
            # Found after the stop began (a claim whose reply was lost, looked
            # up): hand it back unharmed, its attempt refunded, rather than
            # start it only to interrupt it.
            self._submit(running, _attempts.finish(job, "released"))
        elif definition is None:
            # Another worker (a newer deployment) may know it: hand it back
            # unharmed rather than destroying it.
            self._submit(
                running,
                _attempts.finish(job, "released", retry_delay_ms=self.unknown_definition_delay_ms),
            )
        elif self._children is not None or definition.is_async:
            running.task = asyncio.create_task(
                self._run_task(running, definition), name=f"orchestra-job-{job.id}"
            )
        else:
            self._run_in_thread(running, definition)

    # -- running a job ------------------------------------------------------------

    def _run_in_thread(self, running: _Running, definition: JobDefinition[Any]) -> None:
        """Hand a ``def`` attempt to a job thread; its Finish comes back in _threads_done."""
        limit_ms = definition.attempt_timeout_ms
        if limit_ms is not None:
            running.cut = threading.Event()
            running.timer = asyncio.get_running_loop().call_later(
                limit_ms / 1000, self._cut, running
            )
        assert self._threads is not None
        self._threads.submit(
            functools.partial(
                _attempts.run_sync,
                running.job,
                definition,
                stop=self._stop_event,
                cut=running.cut,
                max_payload_bytes=self.config.max_payload_bytes,
            )
        )

    def _cut(self, running: _Running) -> None:
        """A job-thread attempt ran past its attempt_timeout_ms.

        A thread cannot be killed: tell the function to wrap up
        (``ctx.should_stop``), and keep the job running (lease, slot, resource
        key) until it has returned, so that no other attempt of it, nor of its
        resource key, overlaps this one. What it returns is discarded:
        the attempt timed out.
        """
        if running.submitted:
            return
        running.timed_out = True
        assert running.cut is not None
        running.cut.set()

    def _threads_done(self, finishes: list[Finish]) -> None:
        """Attempts returned by job threads: hand their finishes to their lanes."""
        for finish in finishes:
            running = self._attempt_of(finish)
            if running is None or running.submitted:
                continue  # interrupted by the stop: recorded already
            if running.timer is not None:
                running.timer.cancel()
            if running.timed_out:
                definition = self.config.definitions[running.job.definition]
                finish = _attempts.timed_out(running.job, definition, running.started)
            self._submit(running, finish)

    async def _run_task(self, running: _Running, definition: JobDefinition[Any]) -> None:
        """An ``async def`` or child-process attempt; the stop's cancellation interrupts it."""
        try:
            if self._children is not None:
                finish = await self._execute_in_child(running, definition, self._children)
            else:
                finish = await self._execute_async(running, definition)
        except asyncio.CancelledError:
            finish = _attempts.interrupted(running.job, running.started)
        except BaseException as exc:
            # A defect of ours, not of the job: the attempt must still end, or
            # the job would stay running for as long as this worker heartbeats.
            logger.exception(
                "job %d attempt %d: the worker failed to run it",
                running.job.id,
                running.job.attempt,
            )
            finish = _attempts.unrecordable(running.job, definition, running.started, exc)
        self._submit(running, finish)

    async def _execute_async(self, running: _Running, definition: JobDefinition[Any]) -> Finish:
        job, started = running.job, running.started
        try:
            payload = _converter.decode_stored_payload(job.payload, definition.payload_type)
        except Exception as exc:
            return _attempts.failure(job, definition, started, exc, payload_invalid=True)
        ctx = JobContext(
            job_id=job.id,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            definition=definition,
            stop=self._stop_event,
        )
        limit_ms = definition.attempt_timeout_ms
        # No timeout context without a limit: entering one costs about as
        # much per attempt as the rest of a no-op job's dispatch.
        deadline = None if limit_ms is None else asyncio.timeout(limit_ms / 1000)
        try:
            if deadline is None:
                value = await definition.call(payload, ctx)
            else:
                async with deadline:
                    value = await definition.call(payload, ctx)
            return _attempts.succeeded(
                job, definition, value, started, self.config.max_payload_bytes
            )
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the stop interrupts this attempt (_run_task records it)
            # Raised by the job itself, nobody cancelled it: its failure.
            return _attempts.failure(job, definition, started, exc)
        except BaseException as exc:
            # Any BaseException of the job's, KeyboardInterrupt and SystemExit
            # included, fails this attempt only: it must neither leave the job
            # running nor end the worker and its other jobs (the job thread
            # and child paths record them alike).
            if deadline is not None and deadline.expired():
                return _attempts.timed_out(job, definition, started)
            return _attempts.failure(job, definition, started, exc)

    async def _execute_in_child(
        self, running: _Running, definition: JobDefinition[Any], pool: ChildPool
    ) -> Finish:
        """Run the attempt in a child process; a crash of the child fails only this attempt."""
        job, started = running.job, running.started
        limit_ms = definition.attempt_timeout_ms
        reply = await pool.run(
            ChildRequest(
                function=definition.job_function,
                payload_type=definition.payload_type,
                payload=job.payload,
                arity=definition.arity,
                job_id=job.id,
                attempt=job.attempt,
                max_attempts=job.max_attempts,
                definition_name=definition.name,
            ),
            timeout_s=None if limit_ms is None else limit_ms / 1000,
        )
        if reply.timed_out:
            return _attempts.timed_out(job, definition, started)
        if reply.ok:
            assert reply.result is not None
            try:
                _attempts.check_result_size(reply.result, definition, self.config.max_payload_bytes)
            except PayloadError as exc:
                return _attempts.failed(job, definition, started, _attempts.describe(exc), None)
            return _attempts.finish(
                job,
                "succeeded",
                result=reply.result,
                duration_ms=_attempts.elapsed_ms(started),
            )
        return _attempts.failed(
            job,
            definition,
            started,
            reply.error or "the child process failed without a message",
            reply.traceback,
            payload_invalid=reply.payload_invalid,
        )

    def _attempt_of(self, finish: Finish) -> _Running | None:
        """The running entry of the attempt ``finish`` ends, if it is still ours."""
        running = self._running.get(finish.job_id)
        if running is None or running.job.token != finish.token:
            return None  # a newer claim of the same job (this attempt lost its lease)
        return running

    def _submit(self, running: _Running, finish: Finish) -> None:
        running.submitted = True
        lane = running.lane
        lane.unfinished -= 1
        if not lane.pending:
            lane.pending_since = time.monotonic()
        lane.pending.append(finish)
        self._schedule_kick()

    # -- after the commit -----------------------------------------------------------

    def _committed(self, batch: list[Finish]) -> None:
        """Finishes committed (or fenced, or dropped): report them, free their slots."""
        for finish in batch:
            self._report(finish)
            running = self._attempt_of(finish)
            if running is None:
                continue
            definition = self.config.definitions.get(finish.definition)
            if definition is not None and definition.has_callbacks:  # as _has_callbacks
                # The slot stays taken until the callbacks return: slow
                # callbacks slow this worker's claiming rather than pile up.
                task = asyncio.create_task(self._callbacks_then_free(running, finish, definition))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._free(running, definition)

    async def _callbacks_then_free(
        self, running: _Running, finish: Finish, definition: JobDefinition[Any]
    ) -> None:
        try:
            assert self._pool is not None
            await run_callbacks(self._pool, self.config.queries, finish, definition)
        finally:
            self._free(running, definition)

    def _free(self, running: _Running, definition: JobDefinition[Any] | None) -> None:
        if self._running.get(running.job.id) is not running:
            return  # superseded by a newer claim of the job, which uncounted it (_start_job)
        del self._running[running.job.id]
        running.lane.running -= 1
        # Only a full last batch suggests more work; otherwise the next NOTIFY
        # or poll will find it, and an idle worker issues no extra query. A
        # finished job of a limited definition may free a max_concurrency slot.
        if definition is not None and definition.max_concurrency is not None:
            self._maybe_more = True
        if self._maybe_more and self._wakeup is not None:
            self._wakeup.set()

    def _report(self, finish: Finish) -> None:
        """Emit the event of a committed (or fenced) finish."""
        common = {
            "job_id": finish.job_id,
            "definition": finish.definition,
            "attempt": finish.attempt,
        }
        if finish.dropped:
            return  # logged when dropped; the lease will expire and the job be rescued
        if finish.committed_status is None:
            self.stats.fenced += 1
            logger.warning(
                "job %d attempt %d: finish refused, the job was rescued or finalized meanwhile",
                finish.job_id,
                finish.attempt,
            )
            self._emit(events.WorkerJobFenced, outcome=finish.outcome, **common)
        elif finish.outcome == "succeeded":
            self.stats.succeeded += 1
            self._emit(events.WorkerJobSucceeded, duration_ms=finish.duration_ms, **common)
        elif finish.outcome == "released":
            self.stats.released += 1
            assert finish.committed_run_at is not None
            self._emit(
                events.WorkerJobReleased,
                reason="unknown_definition",
                retry_at=finish.committed_run_at,
                **common,
            )
        else:
            self.stats.failed += 1
            will_retry = finish.committed_status == "available"
            event_type = (
                events.WorkerJobPayloadInvalid if finish.payload_invalid else events.WorkerJobFailed
            )
            self._emit(
                event_type,
                max_attempts=finish.max_attempts,
                error=finish.error or "",
                will_retry=will_retry,
                retry_at=finish.committed_run_at if will_retry else None,
                duration_ms=finish.duration_ms,
                **common,
            )

    # -- heartbeat and errors -------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        definitions_due = time.monotonic() + DEFINITION_HEARTBEAT_S
        failures = 0
        while True:
            interval_s = self.heartbeat_interval_ms / 1000
            # After a failure, try again soon (a terminated connection is
            # replaced at once): a lease must not run out for want of a retry.
            await asyncio.sleep(
                min(interval_s, _retry_delay_s(failures)) if failures else interval_s
            )
            held = [running.job for running in self._running.values()]
            try:
                assert self._pool is not None
                async with self._pool.connection() as conn:
                    if time.monotonic() >= definitions_due:
                        # The definitions this worker carries are alive:
                        # the stale-definition sweep must not delete them.
                        await conn.execute(
                            self.config.queries["definition_heartbeat_many"],
                            {"names": list(self.config.definitions), "now": None},
                        )
                        definitions_due = time.monotonic() + DEFINITION_HEARTBEAT_S
                        self.stats.heartbeat_queries += 1
                    self.stats.heartbeat_queries += 1
                    cursor = await conn.execute(
                        self.config.queries["worker_heartbeat"],
                        {
                            "worker_id": self.worker_id,
                            "secret": self.secret,
                            "ids": [job.id for job in held],
                            "tokens": [job.token for job in held],
                        },
                    )
                    row = await cursor.fetchone()
                    if row is not None and not row[0]:
                        logger.warning(
                            "%s: worker row %s vanished; registering again",
                            self.daemon_name,
                            self.worker_id,
                        )
                        self.worker_id = await self._register(conn)
                failures = 0
            except Exception as exc:
                failures += 1
                await self._drop_dead_connections(exc)
                self._emit(
                    events.DaemonDatabaseError,
                    operation="heartbeat",
                    error=_db.redact(_attempts.describe(exc)),
                    retry_in_ms=round(min(interval_s, _retry_delay_s(failures)) * 1000),
                )
                logger.warning(
                    "%s: heartbeat failed: %s",
                    self.daemon_name,
                    _db.redact(_attempts.describe(exc)),
                )

    async def _drop_dead_connections(self, exc: BaseException) -> None:
        """After a connection error, test the pool's idle connections and replace
        the dead ones: when the server ended every session (a restart, a
        failover, terminated backends), the next statements would otherwise get
        dead connections one after the other, and a lease can lapse meanwhile."""
        if self._pool is None or not isinstance(exc, psycopg.OperationalError):
            return
        with contextlib.suppress(Exception):
            await self._pool.check()

    async def _database_error(
        self, operation: str, exc: BaseException, *, wait: bool = True
    ) -> None:
        """Report a failed statement and back off (``wait=False``: retry at once)."""
        self._error_streak += 1
        await self._drop_dead_connections(exc)
        delay = _retry_delay_s(self._error_streak) if wait else 0.0
        message = _db.redact(_attempts.describe(exc))
        if (
            isinstance(exc, psycopg.OperationalError | PayloadError)
            or "pool" in type(exc).__module__
        ):
            logger.warning(
                "%s: %s failed (%s); retrying in %.1f s",
                self.daemon_name,
                operation,
                message,
                delay,
            )
        else:
            logger.exception(
                "%s: %s failed; retrying in %.1f s", self.daemon_name, operation, delay
            )
        self._emit(
            events.DaemonDatabaseError,
            operation=operation,
            error=message,
            retry_in_ms=round(delay * 1000),
        )
        if delay:
            await asyncio.sleep(delay)
        if operation == "claim":
            self._maybe_more = True
