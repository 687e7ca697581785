"""The executor: runs one attempt of a claimed job and reports how it ended.

Three ways to run a job function, one outcome type: every attempt handed to
:meth:`Executor.run` ends in exactly one :class:`~._attempts.Finish`, given to
``on_finish`` on the event loop, whatever the function does (returns, raises
any ``BaseException``, hangs past its timeout, crashes its child process) and
whatever the worker does (its stop interrupts what still runs).

* ``def`` functions run start to end on a job thread (:class:`~._threads.ThreadRunner`);
  a thread cannot be killed, so ``attempt_timeout_ms`` and a cancel of the
  job set ``ctx.should_stop``, and the attempt keeps its slot until the
  function returns;
* ``async def`` functions run in a task on the worker's loop, cancelled at
  their timeout, by the stop, or by a cancel of the job;
* with ``processes``, every function runs in a child process
  (:class:`~._children.ChildPool`), terminated at its timeout or by a cancel
  of the job (the pool replaces the child).

A function that snoozes (raises or returns :class:`~orchestra.Snooze`) ends its
attempt as ``snoozed``; an attempt whose job was cancelled while it ran ends
as ``cancelled`` whatever the function did (:meth:`Executor.cancel`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from orchestra import _converter, _results
from orchestra._definition import JobContext, JobDefinition, ProgressSink, StopSignal
from orchestra._snooze import Snooze
from orchestra._worker import _attempts
from orchestra._worker._attempts import Claimed, Finish
from orchestra._worker._child import ChildAnswer, ChildQuestion, ChildRequest
from orchestra._worker._children import ChildPool
from orchestra._worker._describe import describe
from orchestra._worker._progress import ProgressBoard
from orchestra._worker._threads import ThreadRunner
from orchestra.errors import PayloadError

logger = logging.getLogger("orchestra.worker")


class _Cut:
    """Set when a job-thread attempt must wrap up: it ran past its
    attempt_timeout_ms, or its job was cancelled (what ``ctx.should_stop``
    reads). A plain flag: every ``def`` attempt gets one, and a
    ``threading.Event`` costs some 30 times as much to make; its only reader
    polls ``is_set()``."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@attrs.define(eq=False)
class _Attempt:
    """An attempt under way, until its Finish was handed over."""

    job: Claimed
    definition: JobDefinition[Any]
    #: time.monotonic() when it started.
    started: float
    #: The task of an ``async def`` or child-process attempt; None on a job thread.
    task: asyncio.Task[None] | None = None
    #: A job-thread attempt's ctx.should_stop: set past attempt_timeout_ms or on a cancel.
    cut: _Cut | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    #: Its job was cancelled while it ran: it ends as cancelled, whatever it returns.
    cancelled: bool = False
    #: What its ctx.set_progress reports to (the worker's ProgressBoard).
    progress: ProgressSink | None = None


class Executor:
    """Runs attempts on job threads, on the loop or in child processes.

    Args:
        concurrency: most attempts at once (the job threads' limit).
        processes: run every attempt in this many child processes instead.
        stop: the worker's stop, read by ``ctx.should_stop``.
        max_payload_bytes: the cap on a return value's JSON.
        on_finish: receives each attempt's Finish, once, on the event loop.
        name: prefix of the threads' and children's names.
        progress: where attempts' ``ctx.set_progress`` values wait to be
            written; the value not written when an attempt ends goes with its
            Finish.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        processes: int | None,
        stop: threading.Event,
        max_payload_bytes: int,
        on_finish: Callable[[Finish], None],
        name: str,
        progress: ProgressBoard | None = None,
    ) -> None:
        self._concurrency = concurrency
        self._progress = ProgressBoard() if progress is None else progress
        self._processes = processes
        self._stop = stop
        self._max_payload_bytes = max_payload_bytes
        self._on_finish = on_finish
        self._name = name
        self._attempts: dict[tuple[int, object], _Attempt] = {}
        self._threads: ThreadRunner[Finish] | None = None
        self._children: ChildPool | None = None

    async def start(self) -> None:
        """Start the job threads' runner and the children (on the worker's loop)."""
        self._threads = ThreadRunner(
            self._concurrency,
            loop=asyncio.get_running_loop(),
            on_done=self._threads_done,
            name=self._name,
        )
        if self._processes is not None:
            self._children = ChildPool(self._processes, name=self._name)
            # Started before claiming: a child takes a fraction of a second to
            # import the app, which must not count against the first jobs.
            await asyncio.to_thread(self._children.start)

    def run(self, job: Claimed, definition: JobDefinition[Any]) -> None:
        """Start an attempt of ``job``; its Finish goes to ``on_finish``."""
        attempt = _Attempt(job, definition, time.monotonic())
        attempt.progress = self._progress.open(job.id, job.token)
        self._attempts[job.id, job.token] = attempt
        if self._children is not None or definition.is_async:
            attempt.task = asyncio.create_task(
                self._run_task(attempt), name=f"orchestra-job-{job.id}"
            )
        else:
            self._run_in_thread(attempt)

    def _report(self, attempt: _Attempt, finish: Finish) -> None:
        if self._attempts.pop((attempt.job.id, attempt.job.token), None) is attempt:
            if attempt.cancelled and finish.outcome != "cancelled":
                # Whatever it returned or raised after its job was cancelled
                # (or its interruption by the stop) is discarded: the cancel
                # recorded the attempt's end already.
                finish = _attempts.cancelled(attempt.job, attempt.started)
            # The last value the rate limit held back goes with the finish;
            # one reported from now on is dropped.
            finish.progress = self._progress.close(attempt.job.id, attempt.job.token)
            self._on_finish(finish)

    # -- cancel -----------------------------------------------------------------------

    def cancel(self, job_id: int, token: uuid.UUID) -> bool:
        """Stop the attempt of ``job_id`` under lock ``token``: its job was cancelled.

        An ``async def`` attempt's task is cancelled, a child process attempt's
        child terminated (and replaced); a ``def`` attempt's ``ctx.should_stop``
        turns true, and it keeps its slot until the function returns (a thread
        cannot be killed). Either way it ends in a ``cancelled`` Finish. Returns
        whether such an attempt was under way and not stopped already: the
        token tells a notice about this attempt from one about an earlier
        attempt of the same job.
        """
        attempt = self._attempts.get((job_id, token))
        if attempt is None or attempt.cancelled:
            return False
        attempt.cancelled = True
        if attempt.task is not None:
            attempt.task.cancel()
            # A task cancelled before its first step never runs its coroutine,
            # so nothing would report it; a report of its own makes this one
            # a no-op.
            attempt.task.add_done_callback(
                lambda _: self._report(attempt, _attempts.cancelled(attempt.job, attempt.started))
            )
        else:
            assert attempt.cut is not None
            attempt.cut.set()
        return True

    # -- stop -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Tell attempts in child processes to wrap up (the threads read ``stop``)."""
        if self._children is not None:
            self._children.request_stop()

    async def interrupt(self) -> None:
        """End every attempt still under way as interrupted (it counts and is retried).

        An ``async def`` or child attempt is cancelled. The thread of a ``def``
        attempt runs on until the function returns; what it returns then is
        discarded.
        """
        tasks = []
        for attempt in list(self._attempts.values()):
            if attempt.task is not None:
                attempt.task.cancel()  # the task records the interruption
                tasks.append(attempt.task)
            else:
                if attempt.timer is not None:
                    attempt.timer.cancel()
                self._report(attempt, _attempts.interrupted(attempt.job, attempt.started))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # A task cancelled before its first step never ran its coroutine, so
        # nothing recorded its interruption: do it here.
        for attempt in list(self._attempts.values()):
            self._report(attempt, _attempts.interrupted(attempt.job, attempt.started))

    async def close(self) -> None:
        """Stop the children, let idle job threads end."""
        if self._children is not None:
            await self._children.close()
        if self._threads is not None:
            # Threads of sync jobs that ignored the stop keep running until they
            # return; their attempts were already recorded as interrupted.
            self._threads.close()

    # -- job threads --------------------------------------------------------------------

    def _run_in_thread(self, attempt: _Attempt) -> None:
        attempt.cut = _Cut()
        limit_ms = attempt.definition.attempt_timeout_ms
        if limit_ms is not None:
            attempt.timer = asyncio.get_running_loop().call_later(
                limit_ms / 1000, self._cut, attempt
            )
        assert self._threads is not None
        job, definition, cut = attempt.job, attempt.definition, attempt.cut
        stop, max_payload_bytes, progress = self._stop, self._max_payload_bytes, attempt.progress
        self._threads.submit(
            lambda: run_attempt(
                job,
                definition,
                stop=stop,
                cut=cut,
                max_payload_bytes=max_payload_bytes,
                progress=progress,
            )
        )

    def _cut(self, attempt: _Attempt) -> None:
        """A job-thread attempt ran past its attempt_timeout_ms.

        A thread cannot be killed: tell the function to wrap up
        (``ctx.should_stop``), and keep the job running (lease, slot, resource
        key) until it has returned, so that no other attempt of it, nor of its
        resource key, overlaps this one. What it returns is discarded:
        the attempt timed out.
        """
        if self._attempts.get((attempt.job.id, attempt.job.token)) is not attempt:
            return  # ended already (interrupted by the stop)
        attempt.timed_out = True
        assert attempt.cut is not None
        attempt.cut.set()

    def _threads_done(self, finishes: list[Finish]) -> None:
        """Attempts returned by job threads: report them."""
        for finish in finishes:
            attempt = self._attempts.get((finish.job_id, finish.token))
            if attempt is None:
                continue  # interrupted by the stop: reported already
            if attempt.timer is not None:
                attempt.timer.cancel()
            if attempt.timed_out:
                finish = _attempts.timed_out(attempt.job, attempt.definition, attempt.started)
            self._report(attempt, finish)

    # -- tasks: async def and child processes ------------------------------------------

    async def _run_task(self, attempt: _Attempt) -> None:
        """An ``async def`` or child-process attempt; a cancellation interrupts it."""
        try:
            if self._children is not None:
                finish = await self._run_in_child(attempt, self._children)
            else:
                finish = await run_attempt_async(
                    attempt.job,
                    attempt.definition,
                    attempt.started,
                    stop=self._stop,
                    max_payload_bytes=self._max_payload_bytes,
                    progress=attempt.progress,
                )
        except asyncio.CancelledError:
            finish = _attempts.interrupted(attempt.job, attempt.started)
        except BaseException as exc:
            # A defect of ours, not of the job: the attempt must still end, or
            # the job would stay running for as long as this worker heartbeats.
            logger.exception(
                "job %d attempt %d: the worker failed to run it",
                attempt.job.id,
                attempt.job.attempt,
            )
            finish = _attempts.unrecordable(attempt.job, attempt.definition, attempt.started, exc)
        self._report(attempt, finish)

    async def _run_in_child(self, attempt: _Attempt, pool: ChildPool) -> Finish:
        """Run the attempt in a child process; a crash of the child fails only this attempt."""
        job, definition, started = attempt.job, attempt.definition, attempt.started
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
                tags=job.tags,
                meta=job.meta,
            ),
            timeout_s=None if limit_ms is None else limit_ms / 1000,
            on_progress=attempt.progress,
            serve=functools.partial(_serve_child, job.id, definition),
        )
        if reply.progress is not None and attempt.progress is not None:
            # The child's last value, held back by its own rate limit.
            attempt.progress(reply.progress)
        if reply.timed_out:
            return _attempts.timed_out(job, definition, started)
        if reply.snooze_s is not None:
            return _attempts.snoozed(job, started, reply.snooze_s)
        if reply.ok:
            assert reply.result is not None
            try:
                _attempts.check_result_size(reply.result, definition, self._max_payload_bytes)
            except PayloadError as exc:
                return _attempts.failed(job, definition, started, describe(exc), None)
            return _attempts.finish(
                job,
                "succeeded",
                result=reply.result,
                duration_s=_attempts.elapsed_s(started),
            )
        return _attempts.failed(
            job,
            definition,
            started,
            reply.error or "the child process failed without a message",
            reply.traceback,
            payload_invalid=reply.payload_invalid,
        )


async def _serve_child(
    job_id: int, definition: JobDefinition[Any], question: ChildQuestion
) -> ChildAnswer:
    """Answer what the job function in a child asks: the parent reads for it.

    On the definition's Config, as an ``async def`` job in this process reads
    (its async pool of the worker's loop).
    """
    if question.kind != "dependency_results":
        return ChildAnswer(error=f"unknown question {question.kind!r}")
    rows = await _results.read_dependency_rows_async(definition.config, job_id)
    return ChildAnswer(rows=tuple(tuple(row) for row in rows))


# -- one attempt, start to end ----------------------------------------------------------
# Module functions rather than methods: orchestra.testing runs attempts with
# them too (decode the payload, call the function, encode its return value,
# describe its failure), in the caller's thread or task instead of the
# worker's (see ._inline).


def run_attempt(
    job: Claimed,
    definition: JobDefinition[Any],
    *,
    stop: threading.Event,
    cut: StopSignal | None,
    max_payload_bytes: int,
    progress: ProgressSink | None = None,
) -> Finish:
    """Run a ``def`` job function start to end, in the calling thread; never raises.

    ``stop`` and ``cut`` are what ``ctx.should_stop`` reads; ``progress`` is
    where ``ctx.set_progress`` reports. A function that
    raises or returns a :class:`~orchestra.Snooze` ends the attempt as snoozed.
    """
    started = time.monotonic()
    try:
        try:
            payload = _converter.decode_stored_payload(job.payload, definition.payload_type)
        except Exception as exc:
            return _attempts.failure(job, definition, started, exc, payload_invalid=True)
        ctx = JobContext(
            job_id=job.id,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            definition=definition,
            stop=stop,
            cut=cut,
            tags=job.tags,
            meta=job.meta,
            progress=progress,
        )
        try:
            value = definition.call(payload, ctx)
            if isinstance(value, Snooze):  # return ctx.snooze(...)
                return _attempts.snoozed(job, started, value.seconds)
            return _attempts.succeeded(job, definition, value, started, max_payload_bytes)
        except Snooze as snooze:
            return _attempts.snoozed(job, started, snooze.seconds)
        except BaseException as exc:  # KeyboardInterrupt or SystemExit raised by the job too
            return _attempts.failure(job, definition, started, exc)
    except BaseException as exc:
        # Recording the failure failed (an exception whose rendering raises
        # something exotic): the attempt still ends, or its job would stay
        # running for as long as this worker heartbeats.
        return _attempts.unrecordable(job, definition, started, exc)


async def run_attempt_async(
    job: Claimed,
    definition: JobDefinition[Any],
    started: float,
    *,
    stop: threading.Event,
    max_payload_bytes: int,
    progress: ProgressSink | None = None,
) -> Finish:
    """Run an ``async def`` job function in the current task, cut at its ``attempt_timeout_ms``.

    ``started``: the ``time.monotonic()`` reading the attempt started at. A
    cancellation of the current task (the worker's stop, a cancel of the job)
    is raised, not recorded. A function that raises or returns a
    :class:`~orchestra.Snooze` ends the attempt as snoozed, unless it ran past
    its timeout.
    """
    try:
        payload = _converter.decode_stored_payload(job.payload, definition.payload_type)
    except Exception as exc:
        return _attempts.failure(job, definition, started, exc, payload_invalid=True)
    ctx = JobContext(
        job_id=job.id,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        definition=definition,
        stop=stop,
        tags=job.tags,
        meta=job.meta,
        progress=progress,
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
        if isinstance(value, Snooze):  # return ctx.snooze(...)
            return _attempts.snoozed(job, started, value.seconds)
        return _attempts.succeeded(job, definition, value, started, max_payload_bytes)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the stop interrupts this attempt (Executor._run_task records it)
        # Raised by the job itself, nobody cancelled it: its failure.
        return _attempts.failure(job, definition, started, exc)
    except BaseException as exc:
        # Any BaseException of the job's, KeyboardInterrupt and SystemExit
        # included, fails this attempt only: it must neither leave the job
        # running nor end the worker and its other jobs (the job thread
        # and child paths record them alike).
        if deadline is not None and deadline.expired():
            return _attempts.timed_out(job, definition, started)
        if isinstance(exc, Snooze):
            return _attempts.snoozed(job, started, exc.seconds)
        return _attempts.failure(job, definition, started, exc)
