"""Running jobs one at a time in the calling thread: what ``orchestra.testing`` runs.

The worker's parts without its event loop, lanes, slots and heartbeat, for
:func:`orchestra.testing.drain` and :func:`orchestra.testing.inline`:

* a job is claimed by ``testing_job_claim``, one at a time, highest priority
  first, then FIFO, as ``job_claim`` orders them (its attempt counts, its lock
  token fences its finish, a running job's resource key holds the others of
  that key back);
* its attempt runs through the executor's own functions
  (:func:`._executor.run_attempt` in the calling thread,
  :func:`._executor.run_attempt_async` in the calling task): the same payload
  decoding, call, result encoding, error description and attempt timeout;
* its finish is written by the lane's statements (``job_finish_many`` and
  ``job_release_dependents`` in one transaction): the same retries, backoff,
  attempt log, history and release of dependents;
* its callbacks are called as :mod:`._callbacks` calls them, once the finish
  committed, with the job read back.

The runner registers a worker row of its own (``testing-worker``), so that its
attempts name it in the attempt log and a job it left running (the test process
was killed) is rescued like any dead worker's. It sends no heartbeat: a job
that runs longer than its definition's ``lock_interval_ms`` may be rescued by an
orchestrator running against the same schema meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import functools
import inspect
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import attrs

from orchestra import _migrate
from orchestra._config import Config
from orchestra._definition import JobDefinition, ProgressSink
from orchestra._worker import _attempts, _lanes
from orchestra._worker._attempts import Claimed, Finish
from orchestra._worker._callbacks import callback_raised, due_callbacks
from orchestra._worker._executor import run_attempt, run_attempt_async
from orchestra.errors import UnknownJobError

logger = logging.getLogger("orchestra.testing")

T = TypeVar("T")

#: The name of the runner's worker row (``testing-worker`` in attempt logs).
RUNNER_NAME = "testing"
#: ``until`` that treats every job as due, whatever its run_at.
EVERY_JOB = "infinity"


@attrs.frozen
class RanAttempt:
    """One attempt that :func:`~orchestra.testing.drain` or
    :func:`~orchestra.testing.inline` ran, and what it left its job in.

    Attributes:
        job_id: the job's id.
        definition: the name of its definition.
        attempt: the attempt's number, from 1.
        max_attempts: the job's attempt budget.
        outcome: ``succeeded``, ``failed``, ``timed_out`` (ran past
            ``attempt_timeout_ms``) or ``snoozed`` (the function snoozed: the
            job runs again at ``retry_at``, and this run spent no attempt).
        status: the job's status once the attempt was recorded: ``succeeded``,
            ``failed`` (for good), ``available`` (it will be retried, or run
            after its snooze, at ``retry_at``), or None when the database
            refused the attempt's end because the job was cancelled (or
            otherwise finalized) while it ran.
        retry_at: when the retry is due, for a job left ``available``.
        error: the attempt's error (``ExceptionType: message``), if it failed;
            for a snooze, for how long (``snoozed for 30 s``).
        traceback: the Python traceback of its failure, when there was one.
    """

    job_id: int
    definition: str
    attempt: int
    max_attempts: int
    outcome: str
    status: str | None
    retry_at: dt.datetime | None
    error: str | None
    traceback: str | None


def ran_attempt(finish: Finish) -> RanAttempt:
    """The record of a committed (or refused) finish."""
    status = finish.committed_status
    return RanAttempt(
        job_id=finish.job_id,
        definition=finish.definition,
        attempt=finish.attempt,
        max_attempts=finish.max_attempts,
        outcome=finish.outcome,
        status=status,
        retry_at=finish.committed_run_at if status == "available" else None,
        error=finish.error,
        traceback=finish.traceback,
    )


class LastProgress:
    """Where ``ctx.set_progress`` reports in orchestra.testing: one job runs at a
    time in the caller's thread, and nobody watches it meanwhile, so only the
    last value is kept, written with the attempt's end (as the worker writes
    the value its rate limit held back)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: str | None = None

    def __call__(self, text: str) -> None:
        self.value = text


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from sync code and return its value.

    On a new event loop in this thread, or, when this thread runs an event
    loop already (sync code called from async code), on a new loop in a thread
    of its own. Either way in a copy of the caller's context, so that context
    variables (an active :func:`orchestra.testing.inline`) are seen.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orchestra-testing") as pool:
        return pool.submit(context.run, lambda: asyncio.run(factory())).result()


class Runner:
    """Claims, runs and records jobs of one Config in the calling thread (or task).

    :meth:`start` (or :meth:`start_async`) checks the schema and registers the
    runner's worker row; :meth:`close` deletes it.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._secret = secrets.token_hex(16)
        self._worker_id: int | None = None
        self.worker_name = f"{RUNNER_NAME}-worker"
        #: Never set: ``ctx.should_stop`` turns true only past an attempt timeout.
        self._stop = threading.Event()

    # -- its worker row ------------------------------------------------------------

    def start(self) -> None:
        """Check that the schema is migrated, and register the worker row."""
        registration = {
            "name": RUNNER_NAME,
            "role": "worker",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            # It serves whichever channels it is asked to (NULL), one job at a time.
            "channel": None,
            "channels": None,
            "concurrency": 1,
            "secret": self._secret,
        }
        with self.config.connection() as conn:
            _migrate.check(conn, self.config.schema)
            row = conn.execute(self.config.queries["worker_register"], registration).fetchone()
            assert row is not None
            self._worker_id = int(row[0])

    async def start_async(self) -> None:
        """:meth:`start` from async code (on a thread: it runs once)."""
        await asyncio.to_thread(self.start)

    def close(self) -> None:
        """Delete the worker row; a failure (the schema is gone) is logged, not raised."""
        worker_id, self._worker_id = self._worker_id, None
        if worker_id is None:
            return
        try:
            with self.config.connection() as conn:
                conn.execute(
                    self.config.queries["worker_delete"],
                    {"worker_id": worker_id, "secret": self._secret},
                )
        except Exception:
            logger.warning("could not delete the testing worker row %d", worker_id, exc_info=True)

    async def close_async(self) -> None:
        """:meth:`close` from async code."""
        await asyncio.to_thread(self.close)

    @property
    def worker_id(self) -> int:
        """The worker row's id; the runner must be started."""
        if self._worker_id is None:
            raise RuntimeError("the testing runner is not started")
        return self._worker_id

    # -- claims --------------------------------------------------------------------------

    def _claim_params(
        self,
        *,
        definitions: Iterable[str],
        channels: Iterable[str] | None,
        ids: Iterable[int] | None,
        max_id: int | None,
        until: str | None,
    ) -> dict[str, Any]:
        return {
            "definitions": list(definitions),
            "channels": None if channels is None else list(channels),
            "ids": None if ids is None else list(ids),
            "max_id": max_id,
            "until": until,
            "worker_id": self.worker_id,
            "claim_id": _lanes.new_claim_id(),
        }

    def claim(
        self,
        *,
        definitions: Iterable[str],
        channels: Iterable[str] | None = None,
        ids: Iterable[int] | None = None,
        max_id: int | None = None,
        until: str | None = None,
    ) -> Claimed | None:
        """Claim the next runnable job (see ``testing_job_claim``), or None."""
        params = self._claim_params(
            definitions=definitions, channels=channels, ids=ids, max_id=max_id, until=until
        )
        with self.config.connection() as conn:
            row = conn.execute(self.config.queries["testing_job_claim"], params).fetchone()
        return None if row is None else Claimed(*row)

    async def claim_async(
        self,
        *,
        definitions: Iterable[str],
        channels: Iterable[str] | None = None,
        ids: Iterable[int] | None = None,
        max_id: int | None = None,
        until: str | None = None,
    ) -> Claimed | None:
        """Async twin of :meth:`claim`."""
        params = self._claim_params(
            definitions=definitions, channels=channels, ids=ids, max_id=max_id, until=until
        )
        async with self.config.connection_async() as conn:
            cursor = await conn.execute(self.config.queries["testing_job_claim"], params)
            row = await cursor.fetchone()
        return None if row is None else Claimed(*row)

    def release(self, job: Claimed) -> None:
        """Hand a claimed job back unrun, its attempt refunded (as a worker's stop does)."""
        self._record(_attempts.finish(job, "released"))

    def newest_job_id(self) -> int:
        """The newest id of the queue's unfinished jobs (0 without any)."""
        with self.config.connection() as conn:
            row = conn.execute(self.config.queries["testing_job_max_id"]).fetchone()
        return int(row[0]) if row else 0

    def jobs_left(
        self, *, definitions: Iterable[str], channels: Iterable[str] | None
    ) -> tuple[int, int]:
        """(available, waiting) jobs of these definitions and channels."""
        params = {
            "definitions": list(definitions),
            "channels": None if channels is None else list(channels),
        }
        with self.config.connection() as conn:
            row = conn.execute(self.config.queries["testing_jobs_left"], params).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # -- one attempt, start to end -----------------------------------------------------

    def _definition(self, job: Claimed) -> JobDefinition[Any]:
        definition = self.config.definitions.get(job.definition)
        # Claimed by name among the registered definitions: it is there,
        # unless it was replaced meanwhile by one of another name (never).
        assert definition is not None, job.definition
        return definition

    def run(self, job: Claimed) -> RanAttempt:
        """Run a claimed job's attempt in this thread, record it, call its callbacks."""
        definition = self._definition(job)
        progress = LastProgress()
        finish = self._attempt(job, definition, progress)
        finish.progress = progress.value
        self._record(finish)
        self._callbacks(finish, definition)
        return ran_attempt(finish)

    async def run_async(self, job: Claimed) -> RanAttempt:
        """Async twin of :meth:`run`: an ``async def`` function runs in this task,
        a ``def`` one on a thread (as a worker runs it)."""
        definition = self._definition(job)
        progress = LastProgress()
        if definition.is_async:
            finish = await run_attempt_async(
                job,
                definition,
                time.monotonic(),
                stop=self._stop,
                max_payload_bytes=self.config.max_payload_bytes,
                progress=progress,
            )
        else:
            finish = await asyncio.to_thread(self._attempt, job, definition, progress)
        finish.progress = progress.value
        await self._record_async(finish)
        await self._callbacks_async(finish, definition)
        return ran_attempt(finish)

    def _attempt(
        self, job: Claimed, definition: JobDefinition[Any], progress: ProgressSink | None = None
    ) -> Finish:
        max_payload_bytes = self.config.max_payload_bytes
        if definition.is_async:
            return run_coroutine(
                lambda: run_attempt_async(
                    job,
                    definition,
                    time.monotonic(),
                    stop=self._stop,
                    max_payload_bytes=max_payload_bytes,
                    progress=progress,
                )
            )
        # As on a worker's job thread: past attempt_timeout_ms, ctx.should_stop
        # turns true, and the attempt is recorded as timed out once it returned.
        started = time.monotonic()
        cut: threading.Event | None = None
        timer: threading.Timer | None = None
        if definition.attempt_timeout_ms is not None:
            cut = threading.Event()
            timer = threading.Timer(definition.attempt_timeout_ms / 1000, cut.set)
            timer.daemon = True
            timer.start()
        try:
            finish = run_attempt(
                job,
                definition,
                stop=self._stop,
                cut=cut,
                max_payload_bytes=max_payload_bytes,
                progress=progress,
            )
        finally:
            if timer is not None:
                timer.cancel()
        if cut is not None and cut.is_set():
            return _attempts.timed_out(job, definition, started)
        return finish

    def _statements(self, finish: Finish) -> list[_lanes.Statement]:
        """What a lane writes for a batch of this one finish, without a claim: the
        fenced finish, then the release of its dependents after a success."""
        notify_channel = self.config.notify_channel
        params = _lanes.finish_params(
            [finish],
            worker_id=self.worker_id,
            worker_name=self.worker_name,
            notify_channel=notify_channel,
            finished_channel=self.config.finished_channel,
        )
        statements: list[_lanes.Statement] = [("job_finish_many", params)]
        if finish.outcome == "succeeded":
            release = {"ids": [finish.job_id], "notify_channel": notify_channel}
            statements.append(("job_release_dependents", release))
        return statements

    def _record(self, finish: Finish) -> None:
        """Write the finish as a lane writes it: its statements in one transaction."""
        queries = self.config.queries
        rows = []
        with self.config.connection() as conn, conn.transaction():
            for name, params in self._statements(finish):
                rows.append(conn.execute(queries[name], params).fetchall())
        _lanes.apply_committed([finish], rows[0])

    async def _record_async(self, finish: Finish) -> None:
        queries = self.config.queries
        rows = []
        async with self.config.connection_async() as conn, conn.transaction():
            for name, params in self._statements(finish):
                rows.append(await (await conn.execute(queries[name], params)).fetchall())
        _lanes.apply_committed([finish], rows[0])

    def _callbacks(self, finish: Finish, definition: JobDefinition[Any]) -> None:
        todo = due_callbacks(finish, definition)
        if not todo:
            return
        try:
            job = self.config.jobs.get(finish.job_id)
        except UnknownJobError:  # deleted in the meantime
            return
        for callback in todo:
            try:
                if inspect.iscoroutinefunction(callback):
                    run_coroutine(functools.partial(callback, job))
                else:
                    callback(job)
            except Exception:
                callback_raised(finish.job_id, callback, definition)

    async def _callbacks_async(self, finish: Finish, definition: JobDefinition[Any]) -> None:
        todo = due_callbacks(finish, definition)
        if not todo:
            return
        try:
            job = await self.config.jobs_async.get(finish.job_id)
        except UnknownJobError:
            return
        for callback in todo:
            try:
                if inspect.iscoroutinefunction(callback):
                    await callback(job)
                else:
                    await asyncio.to_thread(callback, job)
            except Exception:
                callback_raised(finish.job_id, callback, definition)
