"""Helpers for testing code that uses orchestra (and for orchestra's own tests).

Running jobs in a test, without daemons, against the real database:

* :func:`drain` runs every runnable job of the Config's definitions, one at a
  time in the calling thread, until none is left, and says what happened
  (:class:`DrainResult`); :func:`drain_async` is its twin for async tests.
* :func:`inline` runs each job right after its ``defer`` committed, before
  ``defer`` returns: the handle's result is there when the call returns.

Both run a job as a worker does (the same payload decoding, call, result
encoding, retries with their attempt log, release of dependents, lifecycle
callbacks, results stored in the database), but in the test's own thread and
one job at a time: docs/how-to/testing.md says what else differs from
production. Checking what was deferred, without running it:

* :func:`deferred_jobs`, :func:`assert_deferred`, :func:`assert_not_deferred`.

The pytest plugin :mod:`orchestra.pytest_plugin` offers them as fixtures.
And for tests that run real daemons:

* :class:`EventRecorder` is an event handler that keeps every event and lets a
  test wait for one, with a deadline, instead of sleeping.
* :func:`wait_until` polls a condition until it holds or a deadline passes.
* :func:`run_until_empty` runs a worker until its channel has no runnable job.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg.pq import TransactionStatus

from orchestra import _converter, _defer, events
from orchestra._checks import is_number
from orchestra._config import Config
from orchestra._definition import JobDefinition
from orchestra._jobs import LIST_LIMIT_MAX, JobHandle
from orchestra._records import Job
from orchestra._worker import Worker
from orchestra._worker._attempts import Claimed
from orchestra._worker._inline import EVERY_JOB, RanAttempt, Runner
from orchestra.errors import ConfigurationError, OrchestraError

__all__ = [
    "DrainResult",
    "EventRecorder",
    "Inline",
    "RanAttempt",
    "assert_deferred",
    "assert_not_deferred",
    "deferred_jobs",
    "drain",
    "drain_async",
    "inline",
    "run_until_empty",
    "runnable_jobs",
    "wait_until",
]

E = TypeVar("E", bound=events.Event)


class EventRecorder:
    """An event handler that records events; thread-safe."""

    def __init__(self) -> None:
        self._events: list[events.Event] = []
        self._changed = threading.Condition()

    def __call__(self, event: events.Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    @property
    def events(self) -> list[events.Event]:
        """A copy of every event recorded so far, in order."""
        with self._changed:
            return list(self._events)

    def of_type(self, event_type: type[E]) -> list[E]:
        """The recorded events that are instances of ``event_type``."""
        return [e for e in self.events if isinstance(e, event_type)]

    def wait_for(
        self,
        event_type: type[E],
        predicate: Callable[[E], bool] = lambda _: True,
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[E]:
        """Wait until ``count`` events of ``event_type`` match ``predicate``; return them.

        Raises TimeoutError (with what was seen) when the deadline passes.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [e for e in self._events if isinstance(e, event_type) and predicate(e)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    kinds = [type(e).__name__ for e in self._events[-20:]]
                    raise TimeoutError(
                        f"waited {timeout} s for {count} {event_type.__name__}, saw "
                        f"{len(matching)}; last events: {kinds}"
                    )
                self._changed.wait(remaining)


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Poll ``condition`` until it returns something truthy; return that value.

    Raises TimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def runnable_jobs(config: Config, channel: str = "_default") -> int:
    """How many jobs of ``channel`` are available now, running, or waiting on dependencies."""
    with config.connection() as conn:
        row = conn.execute(config.queries["job_count_unfinished"], {"channel": channel}).fetchone()
    return int(row[0]) if row else 0


def run_until_empty(
    config: Config, *, channel: str = "_default", concurrency: int = 1, timeout: float = 60.0
) -> Worker:
    """Run a worker in a thread until ``channel`` has no unfinished job due now; return it."""
    worker = Worker(
        config, channel=channel, concurrency=concurrency, name="testing", process_interval_ms=50
    )
    worker.start()
    try:
        wait_until(
            lambda: runnable_jobs(config, channel) == 0,
            timeout=timeout,
            message=f"channel {channel!r} still has runnable jobs after {timeout} s",
        )
    finally:
        worker.stop()
        worker.join()
    return worker


# -- running jobs in the test: drain ----------------------------------------------------

#: How long :func:`drain` may run by default, in seconds.
DRAIN_TIMEOUT_S = 60.0


@attrs.frozen
class DrainResult:
    """What :func:`drain` ran, and what it left in the queue.

    The counts are of attempts: a job that failed twice and then succeeded
    counts twice in ``retried`` and once in ``succeeded``. Two results compare
    by their counts only, so ``assert drain(config) == DrainResult(succeeded=2)``
    checks that two attempts ran, both succeeded, and nothing was left.

    Attributes:
        succeeded: attempts that succeeded.
        failed: attempts that failed their job for good (no attempt was left).
        retried: attempts that failed with attempts left: the job is available
            again, due after its backoff (with ``with_scheduled`` the same
            drain ran it again).
        cancelled: attempts whose end the database refused: their job was
            cancelled (or otherwise finalized) while they ran.
        scheduled: jobs left available and not run: due later (a delay, a
            retry's backoff, a snooze) in a drain without ``with_scheduled``,
            or deferred during a drain with ``with_recursion=False``.
        waiting: jobs left waiting for their dependencies. A job whose
            dependency failed waits until an orchestrator fails it too.
        snoozed: runs whose function snoozed (``Snooze``): the job is available
            again, due when its snooze ends, and spent no attempt (with
            ``with_scheduled`` the same drain ran it again).
        attempts: every attempt that ran, in order (not compared).
    """

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    scheduled: int = 0
    waiting: int = 0
    snoozed: int = 0
    attempts: tuple[RanAttempt, ...] = attrs.field(default=(), eq=False, repr=False)

    @classmethod
    def _of(cls, attempts: Sequence[RanAttempt], *, scheduled: int, waiting: int) -> DrainResult:
        """The result of these attempts, with what was left."""
        statuses = [a.status for a in attempts]
        snoozed = sum(1 for a in attempts if a.outcome == "snoozed")
        return cls(
            succeeded=statuses.count("succeeded"),
            failed=statuses.count("failed"),
            # A snooze leaves its job available too, but it is no retry.
            retried=statuses.count("available") - snoozed,
            cancelled=statuses.count(None),
            scheduled=scheduled,
            waiting=waiting,
            snoozed=snoozed,
            attempts=tuple(attempts),
        )

    def _ids(self, status: str | None, *, snoozed: bool = False) -> tuple[int, ...]:
        return tuple(
            dict.fromkeys(
                a.job_id
                for a in self.attempts
                if a.status == status and (a.outcome == "snoozed") == snoozed
            )
        )

    @property
    def succeeded_ids(self) -> tuple[int, ...]:
        """The ids of the jobs that succeeded, in order."""
        return self._ids("succeeded")

    @property
    def failed_ids(self) -> tuple[int, ...]:
        """The ids of the jobs that failed for good, in order."""
        return self._ids("failed")

    @property
    def retried_ids(self) -> tuple[int, ...]:
        """The ids of the jobs with an attempt that failed and was retried (or is due to be)."""
        return self._ids("available")

    @property
    def snoozed_ids(self) -> tuple[int, ...]:
        """The ids of the jobs that snoozed, in order."""
        return self._ids("available", snoozed=True)

    @property
    def cancelled_ids(self) -> tuple[int, ...]:
        """The ids of the jobs cancelled (or finalized) while an attempt of theirs ran."""
        return self._ids(None)

    @property
    def errors(self) -> tuple[str, ...]:
        """The error of every attempt that failed, in order: ``assert r.failed == 0, r.errors``."""
        return tuple(
            a.error for a in self.attempts if a.error is not None and a.outcome != "snoozed"
        )


@attrs.frozen
class _DrainPlan:
    """The checked arguments of a drain."""

    definitions: tuple[str, ...]
    channels: tuple[str, ...] | None
    until: str | None
    with_recursion: bool
    timeout: float

    def claim_filters(self, max_id: int | None) -> dict[str, Any]:
        return {
            "definitions": self.definitions,
            "channels": self.channels,
            "max_id": max_id,
            "until": self.until,
        }

    def timed_out(self, attempts: Sequence[RanAttempt]) -> TimeoutError:
        return TimeoutError(
            f"drain: jobs were still runnable after {self.timeout} s and {len(attempts)} "
            "attempt(s) (a job that defers jobs, or snoozes, without end?); give a larger "
            "timeout, or with_recursion=False to run only the jobs queued when the drain "
            "started (or with_scheduled=False, to leave snoozed jobs for later)"
        )


def _check_config(config: object) -> Config:
    if not isinstance(config, Config):
        raise ConfigurationError(
            "config", f"must be an orchestra Config, not {type(config).__name__}"
        )
    return config


def _check_flag(value: object, argument: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(argument, f"must be True or False, got {value!r}")
    return value


def _check_names(value: object, argument: str) -> tuple[str, ...] | None:
    """One name or an iterable of names, as a tuple; None stays None."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, JobDefinition)) else value
    if not isinstance(items, Iterable):
        raise ConfigurationError(argument, f"must be a name or an iterable of names, not {value!r}")
    names: list[str] = []
    for item in items:
        name = item.name if argument == "definitions" and isinstance(item, JobDefinition) else item
        if not isinstance(name, str) or not name:
            raise ConfigurationError(argument, f"{item!r} is not a name")
        names.append(name)
    if not names:
        raise ConfigurationError(argument, "must name at least one (or be None for all)")
    return tuple(dict.fromkeys(names))


def _drain_plan(
    config: object,
    channels: object,
    definitions: object,
    with_scheduled: object,
    with_recursion: object,
    timeout: object,
) -> _DrainPlan:
    checked = _check_config(config)
    channel_names = _check_names(channels, "channels")
    names = _check_names(definitions, "definitions")
    registered = checked.definitions
    if names is None:
        names = tuple(registered)
    for name in names:
        if name not in registered:
            raise ConfigurationError(
                "definitions", f"{name!r} is not registered with this Config: it cannot run here"
            )
    if not is_number(timeout) or timeout <= 0:
        raise ConfigurationError(
            "timeout", f"must be a positive number of seconds, got {timeout!r}"
        )
    return _DrainPlan(
        definitions=names,
        channels=channel_names,
        until=EVERY_JOB if _check_flag(with_scheduled, "with_scheduled") else None,
        with_recursion=_check_flag(with_recursion, "with_recursion"),
        timeout=float(timeout),
    )


def drain(
    config: Config,
    *,
    channels: str | Iterable[str] | None = None,
    definitions: JobDefinition[Any] | str | Iterable[JobDefinition[Any] | str] | None = None,
    with_scheduled: bool = False,
    with_recursion: bool = True,
    timeout: float = DRAIN_TIMEOUT_S,
) -> DrainResult:
    """Run the runnable jobs of ``config``'s definitions in this thread, until none is left.

    Jobs run one at a time, in the order a worker takes them (highest priority
    first, then first deferred first), each as a worker runs it: its payload
    structured into the definition's payload type, its return value stored as
    its result, a failure retried while it has attempts left (after its
    backoff: see ``with_scheduled``), its dependents released when it
    succeeds, its callbacks called once its end is recorded. ``def`` functions
    run in this thread; ``async def`` ones on an event loop of their own (use
    :func:`drain_async` to run them on yours). Jobs of definitions not
    registered with ``config`` are left alone.

    Args:
        config: the application's Config.
        channels: only jobs of this channel, or these channels; None: all.
        definitions: only jobs of this definition, or these (JobDefinitions,
            or names registered with ``config``); None: all of ``config``'s.
        with_scheduled: also run the jobs not due yet (deferred with a delay or
            a ``run_at``, retries waiting for their backoff, jobs that snoozed)
            as if they were due: a failing job then runs until it has no
            attempt left, a job that snoozes runs again at once.
        with_recursion: also run the jobs deferred during the drain (by the
            jobs, or their callbacks); False: only the jobs in the queue when
            the drain started (and their retries).
        timeout: seconds after which the drain gives up with TimeoutError,
            looked at between attempts (a job that always defers another
            would never let it end).

    Returns:
        What ran, and what was left (:class:`DrainResult`).

    Raises:
        TimeoutError: jobs were still runnable after ``timeout`` seconds.
        SchemaNotReadyError: the schema is not migrated.
    """
    plan = _drain_plan(config, channels, definitions, with_scheduled, with_recursion, timeout)
    runner = Runner(config)
    runner.start()
    try:
        max_id = None if plan.with_recursion else runner.newest_job_id()
        deadline = time.monotonic() + plan.timeout
        attempts: list[RanAttempt] = []
        while (job := runner.claim(**plan.claim_filters(max_id))) is not None:
            if time.monotonic() > deadline:
                runner.release(job)
                raise plan.timed_out(attempts)
            attempts.append(runner.run(job))
        available, waiting = runner.jobs_left(definitions=plan.definitions, channels=plan.channels)
    finally:
        runner.close()
    return DrainResult._of(attempts, scheduled=available, waiting=waiting)


async def drain_async(
    config: Config,
    *,
    channels: str | Iterable[str] | None = None,
    definitions: JobDefinition[Any] | str | Iterable[JobDefinition[Any] | str] | None = None,
    with_scheduled: bool = False,
    with_recursion: bool = True,
    # The same argument as drain's: looked at between attempts, not a cancellation.
    timeout: float = DRAIN_TIMEOUT_S,  # noqa: ASYNC109
) -> DrainResult:
    """Async twin of :func:`drain`: ``async def`` functions run in the calling task,
    on its event loop, and ``def`` ones on a thread, as a worker runs them."""
    plan = _drain_plan(config, channels, definitions, with_scheduled, with_recursion, timeout)
    runner = Runner(config)
    await runner.start_async()
    try:
        max_id = None if plan.with_recursion else await asyncio.to_thread(runner.newest_job_id)
        deadline = time.monotonic() + plan.timeout
        attempts: list[RanAttempt] = []
        while (job := await runner.claim_async(**plan.claim_filters(max_id))) is not None:
            if time.monotonic() > deadline:
                await asyncio.to_thread(runner.release, job)
                raise plan.timed_out(attempts)
            attempts.append(await runner.run_async(job))
        available, waiting = await asyncio.to_thread(
            runner.jobs_left, definitions=plan.definitions, channels=plan.channels
        )
    finally:
        await runner.close_async()
    return DrainResult._of(attempts, scheduled=available, waiting=waiting)


# -- running jobs in the test: inline --------------------------------------------------


class Inline:
    """Runs every job deferred through its Config's definitions right away: see :func:`inline`.

    Use it as a context manager (``with`` or ``async with``); the pytest
    fixture ``orchestra_inline`` enters it for the whole test.
    """

    def __init__(self, config: Config, *, with_scheduled: bool) -> None:
        self.config = config
        self.with_scheduled = with_scheduled
        self._runner = Runner(config)
        self._pending: dict[int, None] = {}
        self._attempts: list[RanAttempt] = []
        self._lock = threading.Lock()
        self._token: contextvars.Token[tuple[_defer.DeferHook, ...]] | None = None
        self._used = False

    def __repr__(self) -> str:
        return f"Inline(schema={self.config.schema!r}, pending={list(self._pending)})"

    @property
    def attempts(self) -> tuple[RanAttempt, ...]:
        """Every attempt run so far, in order."""
        with self._lock:
            return tuple(self._attempts)

    @property
    def pending(self) -> tuple[int, ...]:
        """The ids of the jobs deferred here that have not run yet.

        A job deferred in your transaction (``defer(conn=...)``) runs once it
        committed, at the next defer or :meth:`run_pending`, or when the block
        ends; a job waiting for its dependencies, or for a resource key that a
        running job holds, runs once it can, after the job that released it;
        with ``with_scheduled=False``, a job deferred with a delay does not run
        here (:func:`drain` runs it). A rolled-back job stays listed, and never runs.
        """
        with self._lock:
            return tuple(self._pending)

    # -- entering and leaving ---------------------------------------------------------

    def _install(self) -> None:
        if self._used:
            raise OrchestraError("this inline() block was entered already: make a new one")
        self._used = True
        self._token = _defer.defer_hooks.set((*_defer.defer_hooks.get(), self))

    def _uninstall(self) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            _defer.defer_hooks.reset(token)
        except ValueError:  # left in another context than the one it was entered in
            _defer.defer_hooks.set(tuple(h for h in _defer.defer_hooks.get() if h is not self))

    def __enter__(self) -> Inline:
        self._install()
        try:
            self._runner.start()
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.run_pending()
        finally:
            self._uninstall()
            self._runner.close()

    async def __aenter__(self) -> Inline:
        self._install()
        try:
            await self._runner.start_async()
        except BaseException:
            self._uninstall()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                await self.run_pending_async()
        finally:
            self._uninstall()
            await self._runner.close_async()

    # -- running ----------------------------------------------------------------------

    def _filters(self, ids: Sequence[int], *, every_job: bool = False) -> dict[str, Any]:
        until = EVERY_JOB if every_job or self.with_scheduled else None
        return {"definitions": list(self.config.definitions), "ids": ids, "until": until}

    def _next(self, ran: RanAttempt) -> dict[str, Any] | None:
        """Keep an attempt; the claim of the job's retry, or None once it is over."""
        with self._lock:
            self._attempts.append(ran)
            if ran.status == "available" and ran.outcome != "snoozed":
                # A retry runs now, whatever its backoff.
                return self._filters([ran.job_id], every_job=True)
            # A snoozed job stays in the queue, due when its snooze ends: run
            # again at once, a job that snoozes until something happens would
            # hold the block for ever. drain(with_scheduled=True) runs it.
            self._pending.pop(ran.job_id, None)
            return None

    def _pending_filters(self) -> dict[str, Any] | None:
        with self._lock:
            ids = list(self._pending)
        return self._filters(ids) if ids else None

    def run_pending(self) -> tuple[RanAttempt, ...]:
        """Run the pending jobs that can run now (see :attr:`pending`); their attempts."""
        ran: list[RanAttempt] = []
        while (filters := self._pending_filters()) is not None:
            job: Claimed | None = self._runner.claim(**filters)
            if job is None:
                break
            while job is not None:
                attempt = self._runner.run(job)
                ran.append(attempt)
                retry = self._next(attempt)
                job = None if retry is None else self._runner.claim(**retry)
        return tuple(ran)

    async def run_pending_async(self) -> tuple[RanAttempt, ...]:
        """Async twin of :meth:`run_pending`."""
        ran: list[RanAttempt] = []
        while (filters := self._pending_filters()) is not None:
            job: Claimed | None = await self._runner.claim_async(**filters)
            if job is None:
                break
            while job is not None:
                attempt = await self._runner.run_async(job)
                ran.append(attempt)
                retry = self._next(attempt)
                job = None if retry is None else await self._runner.claim_async(**retry)
        return tuple(ran)

    # -- the defer hook (orchestra._defer.DeferHook) --------------------------------

    def _adopt(self, definition: _defer.Deferring, handles: Sequence[JobHandle]) -> bool:
        """Make the new jobs of this Config pending; False for another Config's."""
        if definition.config is not self.config:
            return False
        with self._lock:
            for handle in handles:
                if not handle.deduplicated:  # an earlier job's handle: not ours to run
                    self._pending[handle.id] = None
        return True

    def _after_defer(
        self,
        definition: _defer.Deferring,
        handles: Sequence[JobHandle],
        conn: psycopg.Connection[Any] | None,
    ) -> None:
        """Called by ``defer`` (orchestra._defer.DeferHook): run the jobs, unless the
        caller's transaction is open."""
        if self._adopt(definition, handles) and _committed(conn):
            self.run_pending()

    async def _after_defer_async(
        self,
        definition: _defer.Deferring,
        handles: Sequence[JobHandle],
        conn: psycopg.AsyncConnection[Any] | None,
    ) -> None:
        """Called by ``defer_async``: as :meth:`_after_defer`."""
        if self._adopt(definition, handles) and _committed(conn):
            await self.run_pending_async()


def _committed(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None) -> bool:
    """Whether a defer's insert is committed: on orchestra's own connection, or the caller's
    outside a transaction (autocommit). Nothing runs while the caller's transaction is open:
    the job cannot be seen yet, and a job that waited for a lock the caller holds would
    wait for ever, in the caller's own thread."""
    return conn is None or conn.info.transaction_status == TransactionStatus.IDLE


def inline(config: Config, *, with_scheduled: bool = True) -> Inline:
    """A block in which every job deferred through ``config``'s definitions runs at once.

    ``defer`` (and ``defer_many``, and their async twins) inserts the job as
    always, then runs it before returning, in the calling thread (an ``async
    def`` job of ``defer_async``: in the calling task), as a worker would run
    it: when ``defer`` returns, the handle's ``result()`` is there, or raises
    ``JobFailed``. A failing job runs again at once while it has attempts left
    (its backoff is not waited for); its callbacks run before ``defer``
    returns. A job deferred by a running job runs within that job, before
    its ``defer`` returns.

    Deferred in your transaction (``defer(..., conn=conn)``), a job cannot run
    before your commit: it runs at the next defer after it, at
    :meth:`Inline.run_pending`, or when the block ends (if your transaction
    rolled back, never). A job waiting for its dependencies runs after the
    last of them succeeded; a job deferred with a delay runs at once, unless
    ``with_scheduled=False`` (it then stays in the queue). A job that snoozes
    (``Snooze``) is left in the queue, due when its snooze ends, and not run
    again here: ``drain(config, with_scheduled=True)`` runs it. See
    :attr:`Inline.pending`.

    Hooked into ``defer`` through a context variable: it applies to the code
    running in this context (this thread or task, and the tasks and
    ``asyncio.to_thread`` calls it starts), not to tests running beside it,
    nor to threads started with ``threading.Thread`` (a server thread of a
    test client, for instance): use :func:`drain` for those.

    Usage::

        with inline(config):
            handle = send.defer(SendEmail("ada@example.com", "hi"))
            assert handle.result(timeout=0) == {"delivered_to": "ada@example.com"}
    """
    return Inline(
        _check_config(config), with_scheduled=_check_flag(with_scheduled, "with_scheduled")
    )


# -- what was deferred ------------------------------------------------------------------


class _Anything:
    """The default of ``payload``: any payload matches."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Anything()
#: The statuses of a job deferred and not run yet.
NOT_RUN: tuple[str, ...] = ("waiting", "scheduled", "available")


def _definition_name(config: Config, definition: object) -> str:
    if isinstance(definition, JobDefinition):
        return definition.name
    if not isinstance(definition, str) or not definition:
        raise ConfigurationError(
            "definition", f"must be a JobDefinition or a definition's name, not {definition!r}"
        )
    return definition


def _expected_payload(config: Config, definition: object, name: str, payload: Any) -> Any:
    """``payload`` as the queue stores it (JSON values), encoded as ``defer`` encodes it."""
    registered = definition if isinstance(definition, JobDefinition) else None
    if registered is None:
        registered = config.definitions.get(name)
    if registered is not None:
        text = registered._encode(payload)
    else:
        text = _converter.encode_payload(
            payload, payload_type=None, owner=name, max_bytes=config.max_payload_bytes
        )
    return json.loads(text)


def deferred_jobs(
    config: Config,
    definition: JobDefinition[Any] | str | None = None,
    *,
    status: str | Iterable[str] = NOT_RUN,
    channel: str | None = None,
) -> list[Job]:
    """The jobs deferred and not run yet (``waiting`` or ``available``), oldest first.

    Args:
        config: the application's Config.
        definition: only jobs of this definition (or definition name); None: all.
        status: the statuses to list instead (any of ``orchestra.Job``'s).
        channel: only jobs of this channel.
    """
    _check_config(config)
    name = None if definition is None else _definition_name(config, definition)
    jobs: list[Job] = []
    while True:
        page = config.jobs.list(
            status=status, definition=name, channel=channel, limit=LIST_LIMIT_MAX, offset=len(jobs)
        )
        jobs.extend(page)
        if len(page) < LIST_LIMIT_MAX:
            return jobs


def _matching(
    config: Config,
    definition: JobDefinition[Any] | str,
    payload: Any,
    where: Callable[[Job], bool] | None,
) -> tuple[str, list[Job], list[Job], str]:
    """(name, matching jobs, all jobs of the definition not run yet, what was looked for)."""
    _check_config(config)
    name = _definition_name(config, definition)
    if where is not None and not callable(where):
        raise ConfigurationError("where", f"must be a callable taking a Job, not {where!r}")
    expected = ANY if payload is ANY else _expected_payload(config, definition, name, payload)
    jobs = deferred_jobs(config, name)
    matching = [
        job
        for job in jobs
        if (expected is ANY or job.payload == expected) and (where is None or where(job))
    ]
    wanted = f"of {name!r}"
    if expected is not ANY:
        wanted += f" with payload {json.dumps(expected, sort_keys=True)}"
    if where is not None:
        wanted += f" matching {getattr(where, '__qualname__', repr(where))}"
    return name, matching, jobs, wanted


def _found(jobs: Sequence[Job]) -> str:
    if not jobs:
        return "none of it is in the queue"
    shown = ", ".join(json.dumps(job.payload, sort_keys=True) for job in jobs[:10])
    more = f" and {len(jobs) - 10} more" if len(jobs) > 10 else ""
    return f"its jobs in the queue have the payloads {shown}{more}"


def assert_deferred(
    config: Config,
    definition: JobDefinition[Any] | str,
    payload: Any = ANY,
    *,
    count: int | None = None,
    where: Callable[[Job], bool] | None = None,
) -> list[Job]:
    """Assert that jobs of ``definition`` wait in the queue, not run yet; return them.

    Args:
        config: the application's Config.
        definition: the JobDefinition, or its name.
        payload: only jobs with this payload: encoded as ``defer`` encodes it
            (an attrs instance, a dataclass ... or plain JSON values) and
            compared with the stored one. Default: any payload.
        count: exactly this many such jobs (0 included); None: at least one.
        where: only jobs for which this returns true (it receives each
            :class:`orchestra.Job`: its priority, run_at, depends_on ...).

    Raises:
        AssertionError: saying what was looked for and what the queue holds.
    """
    if count is not None and (not isinstance(count, int) or count < 0):
        raise ConfigurationError("count", f"must be None or an int >= 0, got {count!r}")
    _, matching, jobs, wanted = _matching(config, definition, payload, where)
    if (count is None and matching) or (count is not None and len(matching) == count):
        return matching
    expected = "at least 1" if count is None else str(count)
    raise AssertionError(
        f"expected {expected} job(s) {wanted} deferred and not run yet, found "
        f"{len(matching)}; {_found(jobs)}"
    )


def assert_not_deferred(
    config: Config,
    definition: JobDefinition[Any] | str,
    payload: Any = ANY,
    *,
    where: Callable[[Job], bool] | None = None,
) -> None:
    """Assert that no job of ``definition`` (with this payload, matching ``where``) waits
    in the queue; arguments as :func:`assert_deferred`."""
    _, matching, jobs, wanted = _matching(config, definition, payload, where)
    if matching:
        raise AssertionError(
            f"expected no job {wanted} deferred and not run yet, found {len(matching)}; "
            f"{_found(jobs)}"
        )
