"""The Worker daemon: claim jobs of its channels, run them, record every attempt.

The shell that wires the parts together and owns their lifecycle and I/O:

* :mod:`._producer` starts the lanes' statements and dispatches the jobs
  they claim;
* :mod:`._slots` decides, without I/O, what each lane writes and claims and
  what a finish frees;
* :mod:`._writer` runs a lane's statement (:mod:`._lanes`: finishes, then the
  next claim, in one transaction) until it committed, finding out what
  committed after a lost reply;
* :mod:`._executor` runs each attempt on a job thread, on the loop or in a
  child process, and hands back its Finish;
* :mod:`._heartbeat` refreshes the worker row and the leases of held jobs;
* :mod:`._progress` writes what running jobs report with ``ctx.set_progress``,
  at most once per 0.5 s, in one statement for all of them;
* :mod:`._report` counts and emits the events of claims and finishes.

A full claim means there may be more: the lane claims again with its next
finishes; a short one means the channels are drained: claim nothing more until a
NOTIFY, a freed slot of a limited definition, or ``process_interval_ms`` (the
polling fallback). Stop: claim nothing more, let in-flight jobs finish within
the grace period, record the rest as interrupted (they will be retried),
flush, deregister.

A job cancelled while it runs here (``config.jobs.cancel``) is stopped: the
cancel's notification names this worker, the job and its attempt's lock token,
and the heartbeat finds what a missed notification did not say.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from orchestra import _migrate, events
from orchestra._config import Config
from orchestra._daemon import Daemon
from orchestra._definition import JobDefinition
from orchestra._worker._executor import Executor
from orchestra._worker._heartbeat import WorkerHeartbeat, WorkerRow, beat, default_interval_ms
from orchestra._worker._lanes import limited_definitions
from orchestra._worker._listener import Listener
from orchestra._worker._options import (
    PROCESS_INTERVAL_MS_DEFAULT,
    SHUTDOWN_GRACE_MS_DEFAULT,
    UNKNOWN_DEFINITION_DELAY_MS_DEFAULT,
    WorkerOptions,
)
from orchestra._worker._producer import Producer, callbacks_lookup
from orchestra._worker._progress import ProgressBoard, write_progress
from orchestra._worker._report import JobReporter, WorkerStats
from orchestra._worker._retry import DatabaseErrors
from orchestra._worker._slots import Slots
from orchestra._worker._writer import LaneWriter
from orchestra.errors import ConfigurationError

logger = logging.getLogger("orchestra.worker")

#: How long a stopping worker tries to record its last finishes, and then
#: waits for their callbacks.
FLUSH_GRACE_S = 10.0


class Worker(Daemon):
    """Claims and runs the jobs of one channel, or of several.

    Args:
        config: the queue's Config; its registered definitions are what this worker can run.
        channel: the channel to serve (``_default`` when neither this nor
            ``channels`` is given).
        channels: several channels to serve, instead of ``channel``: a
            non-empty list of distinct names. Higher priority goes first
            whatever the channel; channels of equal priority take turns, so a
            backlog in one cannot hold back the jobs of another.
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
            a third of the shortest lock interval of the channels' definitions.
            Also how soon a worker without LISTEN stops a running job that was
            cancelled (with LISTEN, the cancel's notification does at once).
        listen_notify: False for pure polling. A Config behind a transaction
            pooler (``transaction_pooling``) without a ``listen_dsn`` polls too.
        unknown_definition_delay_ms: how long a job of a definition this worker
            does not carry is handed back for before another worker may claim it.
    """

    role = "worker"

    def __init__(
        self,
        config: Config,
        *,
        channel: str | None = None,
        channels: Iterable[str] | None = None,
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
        options = WorkerOptions.check(
            channel=channel,
            channels=channels,
            concurrency=concurrency,
            processes=processes,
            process_interval_ms=process_interval_ms,
            shutdown_grace_ms=shutdown_grace_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            listen_notify=listen_notify,
            unknown_definition_delay_ms=unknown_definition_delay_ms,
        )
        self.options = options
        #: The channels served, in the order given.
        self.channels: tuple[str, ...] = options.channels
        #: The first of :attr:`channels` (the only one of a worker of one channel).
        self.channel: str = options.channels[0]
        self.concurrency = options.concurrency
        self.processes = options.processes
        self.process_interval_ms = options.process_interval_ms
        self.shutdown_grace_ms = options.shutdown_grace_ms
        self.listen_notify = options.listen_notify
        self.unknown_definition_delay_ms = options.unknown_definition_delay_ms
        self.stats = WorkerStats()
        self._row = WorkerRow(
            name=self.name,
            host=self.host,
            pid=self.pid,
            channels=self.channels,
            concurrency=self.concurrency,
            secret=self.secret,
        )
        self._slots = Slots(self.concurrency, has_callbacks=callbacks_lookup(config))
        #: Shutting down (after a stop, or after a failure): no more claims.
        self._closing = False
        self._producer = Producer(
            config,
            self._slots,
            JobReporter(
                self._origin, self._emit, wants_events=self._wants_events, stats=self.stats
            ),
            unknown_definition_delay_ms=self.unknown_definition_delay_ms,
            claims_allowed=lambda: not self._no_more_claims,
            wake=self._wake,
        )
        self._errors = DatabaseErrors(
            daemon_name=self.daemon_name,
            origin=self._origin,
            emit=self._emit,
            on_claim_failed=self._slots.look_again,
        )
        #: ctx.set_progress values waiting to be written (write_progress).
        self._progress = ProgressBoard()
        self._executor = Executor(
            concurrency=self.concurrency,
            processes=self.processes,
            stop=self._stop_event,
            max_payload_bytes=config.max_payload_bytes,
            on_finish=self._producer.on_finish,
            name=f"orchestra-{self.name}",
            progress=self._progress,
        )
        self._pool: AsyncConnectionPool[Any] | None = None
        self._listener: Listener | None = None

    @property
    def worker_id(self) -> int | None:
        """This worker's id in the worker table, once registered."""
        return self._row.worker_id

    def _in_flight(self) -> int:
        return self._slots.in_flight

    @property
    def heartbeat_interval_ms(self) -> int:
        """The effective heartbeat interval."""
        if self.options.heartbeat_interval_ms is not None:
            return self.options.heartbeat_interval_ms
        return default_interval_ms(self._definitions(), self.channels)

    def _definitions(self) -> list[JobDefinition[Any]]:
        return list(self.config.definitions.values())

    @property
    def _no_more_claims(self) -> bool:
        return self.stopping or self._closing

    # -- start and stop -------------------------------------------------------

    async def _main(self) -> None:
        await asyncio.to_thread(self._start_up)
        self._pool = AsyncConnectionPool(
            self.config.dsn,
            # A statement per lane, the heartbeat, the callbacks' reads, the
            # progress writes.
            min_size=len(self._slots.lanes),
            max_size=len(self._slots.lanes) + 3,
            kwargs=self.config.connect_kwargs,
            open=False,
            name=f"orchestra-{self.daemon_name}",
        )
        side_tasks: list[asyncio.Task[None]] = []
        started = False
        handed_back = 0
        error: str | None = None
        try:
            # Inside the try: a pool or a child process that fails to start
            # still gets the worker row deleted and the job threads ended.
            await self._pool.open(wait=True, timeout=30)
            await self._executor.start()
            side_tasks = self._start_side_tasks(self._pool)
            self._emit(events.DaemonStarted(**self._origin.header(), host=self.host, pid=self.pid))
            started = True
            self._ready()
            await self._wake_loop()
            handed_back = await self._drain()
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await self._shutdown(side_tasks)
            if started:
                self._emit(
                    events.DaemonStopped(
                        **self._origin.header(), error=error, handed_back=handed_back
                    )
                )

    def _start_side_tasks(self, pool: AsyncConnectionPool[Any]) -> list[asyncio.Task[None]]:
        """Wire the lane writer; start the heartbeat and the listener."""
        self._errors.pool = pool
        writer = LaneWriter(
            pool,
            self.config.queries,
            self._row,
            channels=self.channels,
            worker_name=self.daemon_name,
            notify_channel=self.config.notify_channel,
            finished_channel=self.config.finished_channel,
            errors=self._errors,
            claims_allowed=lambda: not self._no_more_claims,
            limited=limited_definitions(self._definitions(), self.channels),
            stats=self.stats,
        )
        self._producer.attach(writer, self._executor, pool)
        heartbeat = WorkerHeartbeat(
            self.config.queries,
            self._row,
            definitions=list(self.config.definitions),
            held=lambda: [held.job for held in self._slots.held.values()],
            now=time.monotonic,
            stats=self.stats,
        )
        beating = beat(
            heartbeat,
            pool,
            interval_ms=lambda: self.heartbeat_interval_ms,
            errors=self._errors,
            origin=self._origin,
            emit=self._emit,
            on_cancelled=self._on_heartbeat_cancelled,
        )
        progress = write_progress(
            self._progress,
            pool,
            self.config.queries,
            errors=self._errors,
            daemon_name=self.daemon_name,
        )
        tasks = [
            asyncio.create_task(beating, name="orchestra-heartbeat"),
            asyncio.create_task(progress, name="orchestra-progress"),
        ]
        listen_dsn = self.config.listen_dsn
        if self.listen_notify and listen_dsn is not None:
            self._listener = listener = Listener(
                listen_dsn,
                self.config.notify_channel,
                self.channels,
                on_wakeup=self._on_notify,
                on_lost=lambda error: self._emit(
                    events.WorkerListenLost(**self._origin.header(), error=error)
                ),
                on_restored=lambda: self._emit(
                    events.WorkerListenRestored(**self._origin.header())
                ),
                worker_id=lambda: self._row.worker_id,
                on_cancel=self._on_cancel,
            )
            tasks.append(asyncio.create_task(listener.run(), name="orchestra-listener"))
        return tasks

    def _start_up(self) -> None:
        """Check the schema, write the definitions, register: one connection, in a thread.

        The connection retries with backoff and raises a readable error if the
        server is down; the checks are sync code and run once, so the thread
        keeps the event loop free.
        """
        with self.config.connect() as conn:
            _migrate.check(conn, self.config.schema)
            for definition in self._definitions():
                definition.upsert(conn)
            self._row.register(conn, self.config.queries)

    async def _drain(self) -> int:
        """Wait for running jobs within the grace period; interrupt the rest.

        An interrupted attempt counts and its job is retried. Returns how many
        were interrupted.
        """
        self._executor.request_stop()
        deadline = time.monotonic() + self.shutdown_grace_ms / 1000
        while self._slots.held and not self._force_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._sleep_or_wake(min(remaining, 0.1))
        handed_back = len(self._slots.unsubmitted())
        await self._executor.interrupt()
        return handed_back

    async def _shutdown(self, side_tasks: list[asyncio.Task[None]]) -> None:
        # Also reached when _main failed without a stop: claim nothing more.
        self._closing = True
        deadline = time.monotonic() + FLUSH_GRACE_S
        while self._slots.busy:
            self._producer.lane_done.clear()
            self._producer.kick_all()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._producer.lane_done.wait(), remaining)
        if self._slots.busy:
            logger.warning(
                "%s: could not record %d finished attempt(s) before stopping; "
                "their leases will expire and the jobs will be rescued",
                self.daemon_name,
                self._slots.submitted_count(),
            )
        if self._producer.tasks:
            # Statements still retrying are given up; callbacks may finish.
            tasks = self._producer.tasks
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            left = list(tasks)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
        if self._pool is not None:
            await self._row.deregister(self._pool, self.config.queries)
            await self._pool.close()
        await self._executor.close()

    # -- claiming and writing ---------------------------------------------------

    def _on_notify(self) -> None:
        self._slots.notified()
        # Claim right here, on the listener's turn of the loop, rather than a
        # turn later in the wake loop: this is the idle worker's latency path.
        # The wake-up still resets the polling timer.
        self._producer.kick_all()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- cancelled jobs ----------------------------------------------------------------

    def _on_cancel(self, job_id: int, token: uuid.UUID) -> None:
        """A job this worker runs was cancelled (its notification): stop its attempt.

        The token names the attempt: a late notice about an earlier attempt of
        a job claimed again since changes nothing. A notice that arrives before
        the claim's reply is ignored; the heartbeat finds that job.
        """
        held = self._slots.held.get(job_id)
        if held is None or held.job.token != token or held.submitted:
            return  # not ours, another attempt, or it ended already
        if self._executor.cancel(job_id, token):
            logger.info(
                "%s: job %d was cancelled; stopping its attempt %d",
                self.daemon_name,
                job_id,
                held.job.attempt,
            )

    def _on_heartbeat_cancelled(self, cancelled: tuple[tuple[int, uuid.UUID], ...]) -> None:
        for job_id, token in cancelled:
            self._on_cancel(job_id, token)

    async def _wake_loop(self) -> None:
        """Until the stop: let the lanes claim on a NOTIFY, and poll every interval.

        Under load the lanes claim with their finishes and need no wake-up;
        this loop only starts claims of idle lanes.
        """
        interval_s = self.process_interval_ms / 1000
        while not self.stopping:
            if self._slots.maybe_more:
                self._producer.kick_all()
            sleep_s = interval_s
            release_wait_s, self._producer.release_wait_s = self._producer.release_wait_s, None
            if release_wait_s is not None:
                sleep_s = min(interval_s, release_wait_s)
            if not await self._sleep_or_wake(sleep_s):
                self._slots.look_again()  # nothing woke us: the polling fallback looks again
