"""The Worker daemon: claim jobs of one channel, run them, record every attempt.

Loop, in short:

* claim up to the free slots in one statement (never more), start a task per job;
* a full batch means there may be more: claim again as soon as a slot frees;
  a short batch means the channel is drained: sleep until a NOTIFY, a freed
  slot after a full batch, or ``process_interval_ms`` (the polling fallback);
* job tasks run ``async def`` functions on the loop and ``def`` functions in a
  bounded thread pool, then hand the outcome to the :class:`Acker`; a slot is
  free again once its finish is committed;
* a heartbeat task refreshes the worker row and extends the leases of the jobs
  still running, in one statement;
* stop: claim nothing more, let in-flight jobs finish within the grace period,
  record the rest as interrupted (they will be retried), flush, deregister.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import inspect
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from typing import Any

import attrs
import psycopg
from psycopg.rows import dict_row
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
from orchestra._jobs import job_from_row
from orchestra._worker._acker import Acker, Finish, Outcome
from orchestra._worker._children import ChildPool, ChildRequest
from orchestra._worker._listener import Listener
from orchestra.errors import ConfigurationError, PayloadError

logger = logging.getLogger("orchestra.worker")

PROCESS_INTERVAL_MS_DEFAULT = 1_000
SHUTDOWN_GRACE_MS_DEFAULT = 30_000
HEARTBEAT_INTERVAL_MS_DEFAULT = 10_000
UNKNOWN_DEFINITION_DELAY_MS_DEFAULT = 5_000
ERROR_BACKOFF_MIN_S = 0.2
ERROR_BACKOFF_MAX_S = 15.0
#: Errors and tracebacks are stored bounded: a job must not be able to bloat
#: the attempt log (or exceed a NOTIFY or log line) with a megabyte message.
ERROR_MAX_CHARS = 4_000
#: How often a worker refreshes last_heartbeat_at of the definitions it carries.
DEFINITION_HEARTBEAT_S = 60.0
TRACEBACK_MAX_CHARS = 32_000
#: Claims refused in a row by the running-resource-key index before the
#: worker backs off as for a database error (each retry normally succeeds).
KEY_CONFLICT_RETRIES = 3


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


@attrs.frozen
class _Claimed:
    id: int
    definition: str
    payload: Any
    attempt: int
    max_attempts: int
    token: uuid.UUID
    started_at: dt.datetime
    run_at: dt.datetime
    priority: int
    trace_context: str | None


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
        self._running: dict[int, tuple[_Claimed, asyncio.Task[None]]] = {}
        self._maybe_more = True
        self._pool: AsyncConnectionPool[Any] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._children: ChildPool | None = None
        self._acker: Acker | None = None
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

        self._pool = AsyncConnectionPool(
            dsn,
            min_size=2,
            max_size=3,
            kwargs=dict(_db.CONNECT_KWARGS),
            open=False,
            name=f"orchestra-{self.daemon_name}",
        )
        await self._pool.open(wait=True, timeout=30)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=f"orchestra-{self.name}"
        )
        if self.processes is not None:
            self._children = ChildPool(self.processes, name=f"orchestra-{self.name}")
            # Started before claiming: a child takes a fraction of a second to
            # import the app, which must not count against the first jobs.
            await asyncio.to_thread(self._children.start)
        self._acker = Acker(
            self._write_finishes,
            worker_id=lambda: self.worker_id or 0,
            worker_name=self.daemon_name,
            notify_channel=self.config.notify_channel,
            finished_channel=self.config.finished_channel,
            on_error=lambda exc: self._database_error("finish", exc),
        )
        side_tasks = [
            asyncio.create_task(self._acker.run(), name="orchestra-acker"),
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
            await self._claim_loop()
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
        """Wait for running jobs within the grace period; interrupt the rest."""
        if self._children is not None:
            self._children.request_stop()  # ctx.should_stop in the children
        deadline = time.monotonic() + self.shutdown_grace_ms / 1000
        while self._running and not self._force_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._sleep_or_wake(min(remaining, 0.1))
        leftovers = [task for _, task in self._running.values()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
        return len(leftovers)

    async def _shutdown(self, side_tasks: list[asyncio.Task[None]]) -> None:
        acker_task = side_tasks[0]
        if self._acker is not None:
            self._acker.close()
            try:
                await asyncio.wait_for(asyncio.shield(acker_task), timeout=10)
            except (TimeoutError, Exception):
                logger.warning(
                    "%s: could not record %d finished attempt(s) before stopping; "
                    "their leases will expire and the jobs will be rescued",
                    self.daemon_name,
                    self._acker.backlog,
                )
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
        if self._pool is not None:
            if self.worker_id is not None:
                try:
                    async with self._pool.connection(timeout=5) as conn:
                        await conn.execute(
                            self.config.queries["worker_delete"], {"worker_id": self.worker_id}
                        )
                except Exception:
                    logger.warning(
                        "%s: could not delete the worker row", self.daemon_name, exc_info=True
                    )
            await self._pool.close()
        if self._children is not None:
            await self._children.close()
        if self._executor is not None:
            # Threads of sync jobs that ignored the stop keep running until they
            # return; their jobs were already recorded as interrupted.
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- claiming ---------------------------------------------------------------

    def _on_notify(self) -> None:
        self._maybe_more = True
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

    async def _claim_loop(self) -> None:
        interval_s = self.process_interval_ms / 1000
        limited, release_s = self._limited_definitions()
        while not self.stopping:
            free = self.concurrency - len(self._running)
            sleep_s = interval_s
            if free > 0 and self._maybe_more:
                try:
                    claimed = await self._claim("job_claim", free)
                    guarded = []
                    if limited and len(claimed) < free:
                        guarded = await self._claim_limited(free - len(claimed), limited)
                except psycopg.errors.UniqueViolation as exc:
                    # Another worker started a job of the same resource key
                    # between our snapshot and our UPDATE: the index refused
                    # ours (I7). Claim again: the new snapshot sees the winner.
                    self._key_conflicts += 1
                    if self._key_conflicts > KEY_CONFLICT_RETRIES:
                        await self._database_error("claim", exc)
                    self._maybe_more = True
                    continue
                except Exception as exc:
                    await self._database_error("claim", exc)
                    continue
                self._error_streak = 0
                self._key_conflicts = 0
                self._maybe_more = len(claimed) + len(guarded) == free
                for job in [*claimed, *guarded]:
                    self._start_job(job)
                if self._maybe_more:
                    continue
                if guarded and release_s:
                    # A rate-limited backlog: the next release is due one interval on.
                    sleep_s = min(interval_s, release_s)
            if not await self._sleep_or_wake(sleep_s):
                self._maybe_more = True  # nothing woke us: the polling fallback looks again

    async def _claim_limited(self, limit: int, definitions: list[str]) -> list[_Claimed]:
        """The guarded claim: lock the limited definitions, then claim in a fresh snapshot."""
        assert self._pool is not None
        self.stats.claim_queries += 1
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                self.config.queries["definition_lock_limited"], {"definitions": definitions}
            )
            locked = [row[0] for row in await cursor.fetchall()]
            if not locked:
                return []
            cursor = await conn.execute(
                self.config.queries["job_claim_limited"],
                {"definitions": locked, "limit": limit, "worker_id": self.worker_id},
            )
            rows = await cursor.fetchall()
        return [_Claimed(*row) for row in rows]

    async def _claim(self, query: str, limit: int) -> list[_Claimed]:
        assert self._pool is not None
        self.stats.claim_queries += 1
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self.config.queries[query],
                {
                    "channel": self.channel,
                    "now": None,
                    "limit": limit,
                    "worker_id": self.worker_id,
                },
            )
            rows = await cursor.fetchall()
        return [_Claimed(*row) for row in rows]

    def _start_job(self, job: _Claimed) -> None:
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
        task = asyncio.create_task(self._run_job(job), name=f"orchestra-job-{job.id}")
        self._running[job.id] = (job, task)
        self.stats.max_running = max(self.stats.max_running, len(self._running))

    # -- running a job ------------------------------------------------------------

    async def _run_job(self, job: _Claimed) -> None:
        started = time.monotonic()
        try:
            finish = await self._execute(job)
        except asyncio.CancelledError:
            finish = self._finish(
                job,
                "interrupted",
                error="interrupted: the worker stopped before the job finished",
                duration_ms=_elapsed_ms(started),
            )
        assert self._acker is not None
        self._acker.submit(finish)
        try:
            await asyncio.shield(finish.done)
        except asyncio.CancelledError:
            await finish.done
        self._report(finish)
        definition = self.config.definitions.get(job.definition)
        if definition is not None and definition.has_callbacks:
            # Before the slot is freed: slow callbacks slow this worker's
            # claiming rather than pile up without bound.
            await self._run_callbacks(finish, definition)
        del self._running[job.id]
        self._slot_freed(job)

    async def _run_callbacks(self, finish: Finish, definition: JobDefinition[Any]) -> None:
        """Call on_attempt, then on_success or on_failure, once each, with the updated job (I5).

        Only for an attempt whose end was committed: a fenced or handed-back
        attempt did not happen as far as the queue is concerned. A callback
        that raises is logged and changes nothing (the job's state is
        committed already). If this process dies between the commit and the
        call, the callbacks of that attempt are lost: they are at most once;
        use events or a follow-up job for what must not be lost.
        """
        status = finish.committed_status
        if finish.dropped or status is None or finish.outcome == "released":
            return
        callbacks = [definition.on_attempt]
        if status == "succeeded":
            callbacks.append(definition.on_success)
        elif status == "failed":
            callbacks.append(definition.on_failure)
        todo = [c for c in callbacks if c is not None]
        if not todo:
            return
        try:
            assert self._pool is not None
            async with self._pool.connection() as conn:
                cursor = conn.cursor(row_factory=dict_row)
                await cursor.execute(
                    self.config.queries["manage_job_get"],
                    {"id": finish.job_id, "with_attempts": True},
                )
                row = await cursor.fetchone()
        except Exception as exc:
            logger.warning(
                "job %d: could not read the job back for its callbacks, skipped: %s",
                finish.job_id,
                _db.redact(_describe(exc)),
            )
            return
        if row is None:  # deleted in the meantime
            return
        job = job_from_row(row)
        loop = asyncio.get_running_loop()
        for callback in todo:
            try:
                if inspect.iscoroutinefunction(callback):
                    await callback(job)
                else:
                    await loop.run_in_executor(self._executor, callback, job)
            except Exception:
                logger.exception(
                    "job %d: callback %s of %r raised; the job is not affected",
                    finish.job_id,
                    getattr(callback, "__qualname__", repr(callback)),
                    definition.name,
                )

    def _slot_freed(self, job: _Claimed) -> None:
        # Only a full last batch suggests more work; otherwise the next NOTIFY
        # or poll will find it, and an idle worker issues no extra query. A
        # finished job of a limited definition may free a max_concurrency slot.
        definition = self.config.definitions.get(job.definition)
        if definition is not None and definition.max_concurrency is not None:
            self._maybe_more = True
        if self._maybe_more and self._wakeup is not None:
            self._wakeup.set()

    def _finish(self, job: _Claimed, outcome: Outcome, **fields: Any) -> Finish:
        return Finish(
            job_id=job.id,
            definition=job.definition,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            token=job.token,
            started_at=job.started_at,
            outcome=outcome,
            **fields,
        )

    async def _execute(self, job: _Claimed) -> Finish:
        definition = self.config.definitions.get(job.definition)
        if definition is None:
            # Another worker (a newer deployment) may know it: hand it back
            # unharmed rather than destroying it (seed bug 8).
            return self._finish(job, "released", retry_delay_ms=self.unknown_definition_delay_ms)
        started = time.monotonic()
        if self._children is not None:
            return await self._execute_in_child(job, definition, self._children, started)
        try:
            payload = _converter.decode_payload(job.payload, definition.payload_type)
        except Exception as exc:
            return self._failure(job, definition, started, exc, payload_invalid=True)
        limit_ms = definition.attempt_timeout_ms
        # Only an attempt that can time out needs an event of its own.
        cut = None if limit_ms is None else threading.Event()
        ctx = JobContext(
            job_id=job.id,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            definition=definition,
            stop=self._stop_event,
            cut=cut,
        )
        deadline = asyncio.timeout(None if limit_ms is None else limit_ms / 1000)
        thread: asyncio.Future[Any] | None = None
        try:
            async with deadline:
                if definition.is_async:
                    value = await definition.call(payload, ctx)
                else:
                    loop = asyncio.get_running_loop()
                    thread = loop.run_in_executor(self._executor, definition.call, payload, ctx)
                    # Shielded: a timeout must not forget the thread (see below).
                    value = await (thread if cut is None else asyncio.shield(thread))
            result = _converter.dumps(value, what="the return value", owner=definition.name)
            self._check_result_size(result, definition)
        except (Exception, SystemExit) as exc:
            if deadline.expired():
                if thread is not None and cut is not None:
                    # A thread cannot be killed: tell the function to wrap up,
                    # and keep the job running (lease, slot, resource key)
                    # until it has returned, so that no other attempt of it,
                    # nor of its resource key, overlaps this one (I7). What
                    # it returns is discarded: the attempt timed out.
                    cut.set()
                    with contextlib.suppress(Exception, SystemExit):
                        await thread
                return self._timed_out(job, definition, started)
            return self._failure(job, definition, started, exc)
        return self._finish(
            job,
            "succeeded",
            result=result,
            duration_ms=_elapsed_ms(started),
        )

    async def _execute_in_child(
        self, job: _Claimed, definition: JobDefinition[Any], pool: ChildPool, started: float
    ) -> Finish:
        """Run the attempt in a child process; a crash of the child fails only this attempt."""
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
            return self._timed_out(job, definition, started)
        if reply.ok:
            assert reply.result is not None
            try:
                self._check_result_size(reply.result, definition)
            except PayloadError as exc:
                return self._failed(job, definition, started, _describe(exc), None)
            return self._finish(
                job, "succeeded", result=reply.result, duration_ms=_elapsed_ms(started)
            )
        return self._failed(
            job,
            definition,
            started,
            reply.error or "the child process failed without a message",
            reply.traceback,
            payload_invalid=reply.payload_invalid,
        )

    def _check_result_size(self, result: str, definition: JobDefinition[Any]) -> None:
        """Raise PayloadError if a return value's JSON is over the payload size cap."""
        if len(result) <= self.config.max_payload_bytes:  # chars <= bytes: cheap pre-check
            return
        size = len(result.encode("utf-8"))
        if size > self.config.max_payload_bytes:
            raise PayloadError(
                definition.name,
                f"the return value is {size} bytes, over the limit of "
                f"{self.config.max_payload_bytes} bytes",
            )

    def _timed_out(self, job: _Claimed, definition: JobDefinition[Any], started: float) -> Finish:
        return self._finish(
            job,
            "timed_out",
            error=f"AttemptTimeout: the attempt ran longer than attempt_timeout_ms "
            f"({definition.attempt_timeout_ms} ms) and was cut",
            retry_delay_ms=definition.backoff.delay_ms(job.attempt),
            duration_ms=_elapsed_ms(started),
        )

    def _failure(
        self,
        job: _Claimed,
        definition: JobDefinition[Any],
        started: float,
        exc: BaseException,
        *,
        payload_invalid: bool = False,
    ) -> Finish:
        if payload_invalid:
            error = (
                f"PayloadError: stored payload does not fit {definition.payload_type!r}: "
                f"{_converter.describe_structure_error(exc)}"
            )
            trace = None
        else:
            error = _describe(exc)
            trace = "".join(traceback.format_exception(exc))
        return self._failed(job, definition, started, error, trace, payload_invalid=payload_invalid)

    def _failed(
        self,
        job: _Claimed,
        definition: JobDefinition[Any],
        started: float,
        error: str,
        trace: str | None,
        *,
        payload_invalid: bool = False,
    ) -> Finish:
        """A failed attempt, its error and traceback bounded, retried after the backoff."""
        return self._finish(
            job,
            "failed",
            error=_storable(error, ERROR_MAX_CHARS),
            traceback=None if trace is None else _storable(trace, TRACEBACK_MAX_CHARS),
            payload_invalid=payload_invalid,
            retry_delay_ms=definition.backoff.delay_ms(job.attempt),
            duration_ms=_elapsed_ms(started),
        )

    async def _write_finishes(self, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        assert self._pool is not None
        succeeded = [
            job_id
            for job_id, outcome in zip(params["ids"], params["outcomes"], strict=True)
            if outcome == "succeeded"
        ]
        async with self._pool.connection() as conn, conn.pipeline():
            # One round trip for both statements, each its own transaction
            # (autocommit). The release must be a second statement, whose
            # snapshot is taken after the finish committed (decision 0007).
            cursor = await conn.execute(self.config.queries["job_finish_many"], params)
            if succeeded:
                await conn.execute(
                    self.config.queries["job_release_dependents"],
                    {"ids": succeeded, "notify_channel": self.config.notify_channel},
                )
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
        self._error_streak = 0
        return rows

    def _report(self, finish: Finish) -> None:
        """Emit the event of a committed (or fenced) finish."""
        common = {
            "job_id": finish.job_id,
            "definition": finish.definition,
            "attempt": finish.attempt,
        }
        if finish.dropped:
            return  # logged by the acker; the lease will expire and the job be rescued
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
        while True:
            await asyncio.sleep(self.heartbeat_interval_ms / 1000)
            held = list(self._running.values())
            try:
                assert self._pool is not None
                async with self._pool.connection() as conn:
                    if time.monotonic() >= definitions_due:
                        # The definitions this worker carries are alive (G1):
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
                            "ids": [job.id for job, _ in held],
                            "tokens": [job.token for job, _ in held],
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
            except Exception as exc:
                self._emit(
                    events.DaemonDatabaseError,
                    operation="heartbeat",
                    error=_db.redact(_describe(exc)),
                    retry_in_ms=self.heartbeat_interval_ms,
                )
                logger.warning(
                    "%s: heartbeat failed: %s", self.daemon_name, _db.redact(_describe(exc))
                )

    async def _database_error(self, operation: str, exc: BaseException) -> None:
        self._error_streak += 1
        delay = min(ERROR_BACKOFF_MAX_S, ERROR_BACKOFF_MIN_S * 2 ** (self._error_streak - 1))
        message = _db.redact(_describe(exc))
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
        if operation == "claim":
            await self._sleep_or_wake(delay)
            self._maybe_more = True
        else:
            await asyncio.sleep(delay)


def _storable(text: str, limit: int) -> str:
    """Text a PostgreSQL text column accepts (no NUL) and bounded in size, keeping both ends."""
    text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
