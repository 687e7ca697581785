"""JobDefinition: a kind of job, its settings, and how its jobs are deferred and called.

A JobDefinition is declared once per process and registers itself with its
Config. It checks its settings (:mod:`orchestra._checks`), writes its row in
``job_definition``, validates the arguments of a defer and hands the insert to
:mod:`orchestra._defer`; the worker calls its function through
:meth:`JobDefinition.call`. :class:`JobContext` is what a job function may
know about the attempt it runs in.

JobDefinition is generic in its payload type ``P``: ``payload_type`` fixes
it, and the job function must take a ``P``, so that a type checker refuses
``defer`` of anything else. Without ``payload_type`` the job function
receives plain JSON, so ``P`` is ``Any`` whatever the function's annotation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeAlias, overload

import attrs
import psycopg
from typing_extensions import TypeVar

from orchestra import _callables, _checks, _converter, _defer, _ops, _results
from orchestra._backoff import Backoff
from orchestra._checks import (
    check_cron,
    check_flag,
    check_int,
    check_key,
    check_name,
    check_tags,
    encode_meta,
    encode_progress,
    milliseconds,
)
from orchestra._jobs import JobHandle, ManagedDatabase
from orchestra._ops import Op, Statement
from orchestra._pools import LoopLocks
from orchestra._records import Job
from orchestra._snooze import Snooze
from orchestra.errors import ConfigurationError

# The payload type; Any when a definition declares none (plain JSON).
P = TypeVar("P", default=Any)
#: A lifecycle callback: receives the updated job (orchestra.Job); ``def`` or
#: ``async def``; what it returns is ignored.
Callback = Callable[[Job], Any]

PRIORITY_MIN, PRIORITY_MAX = -100, 100
LOCK_INTERVAL_MIN_MS = 500
#: How often a process re-upserts a definition it defers to, so that a
#: definition swept as stale while this process was idle comes back before the
#: next insert needs it (a job row refers to its definition, so the insert
#: would fail without it). Far below the stale threshold (1 h).
DEFINITION_REFRESH_S = 600.0


class StopSignal(Protocol):
    """What ``ctx.should_stop`` reads besides the worker's stop: a ``threading.Event``
    or any flag with ``is_set()``."""

    def is_set(self) -> bool:
        """Whether the attempt should wrap up."""
        ...


#: Where ``ctx.set_progress`` hands a checked value (its JSON text): the
#: worker's progress writer, which writes the latest value of each job at
#: most every 0.5 s, and the last one with the attempt's end.
ProgressSink = Callable[[str], None]


def decode_meta(text: str) -> Mapping[str, Any]:
    """A job's stored metadata (JSON text) as a read-only mapping."""
    value = _converter.load_stored(text)
    return types.MappingProxyType(value if isinstance(value, dict) else {})


class JobContext:
    """What a job function may know about the attempt it runs in.

    Attributes:
        job_id: the job's id.
        attempt: this attempt's number, from 1.
        max_attempts: the job's attempt budget.
        definition: the JobDefinition being run.
        tags: the tags the job was deferred with, a tuple (read-only).
        logger: a logger that tags every record with the job: ``job_id``,
            ``definition`` (its name) and ``attempt``, which orchestra's log
            formatters print (orchestra.handlers).
    """

    __slots__ = (
        "_cut",
        "_meta",
        "_meta_text",
        "_progress",
        "_stop",
        "attempt",
        "definition",
        "job_id",
        "logger",
        "max_attempts",
        "tags",
    )

    def __init__(
        self,
        *,
        job_id: int,
        attempt: int,
        max_attempts: int,
        definition: JobDefinition[Any],
        stop: threading.Event,
        cut: StopSignal | None = None,
        tags: Iterable[str] = (),
        meta: str = "{}",
        progress: ProgressSink | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.definition = definition
        self.tags: tuple[str, ...] = tuple(tags)
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"orchestra.job.{definition.name}"),
            {"job_id": job_id, "definition": definition.name, "attempt": attempt},
        )
        self._stop = stop
        self._cut = cut
        # Decoded on first use: most jobs never read it.
        self._meta_text = meta
        self._meta: Mapping[str, Any] | None = None
        self._progress = progress

    @property
    def meta(self) -> Mapping[str, Any]:
        """The metadata the job was deferred with (``defer(meta=...)``), read-only."""
        if self._meta is None:
            self._meta = decode_meta(self._meta_text)
        return self._meta

    def set_progress(self, value: float | Mapping[str, Any]) -> None:
        """Report how far this attempt got: a fraction from 0 to 1, or a dict.

        For instance ``ctx.set_progress(0.3)`` or ``ctx.set_progress({"done": 3,
        "total": 10})`` (the dashboard draws a bar for either). The value is
        checked here (a bad one raises ConfigurationError naming ``progress``)
        and stored with the job, readable as ``Job.progress`` and
        ``JobHandle.progress()``. Cheap enough for a tight loop: the worker
        writes the latest value of each job at most every 0.5 s, and the last
        one with the attempt's end; only the running attempt's values are
        written (one that ended, was rescued or cancelled writes nothing).
        """
        text = encode_progress(value)
        if self._progress is not None:
            self._progress(text)

    @property
    def should_stop(self) -> bool:
        """True once the worker is shutting down, this attempt ran past its
        ``attempt_timeout_ms``, or its job was cancelled (``config.jobs.cancel``):
        a long job should wrap up and return or raise."""
        return self._stop.is_set() or (self._cut is not None and self._cut.is_set())

    def snooze(self, seconds: float | dt.timedelta) -> Snooze:
        """What to return to run this job again in ``seconds``, without spending an
        attempt: ``return ctx.snooze(30)``, the same as ``raise Snooze(30)``.

        ``seconds``: a number from 0 to 10 years, or a ``timedelta``; anything
        else raises :class:`~orchestra.ConfigurationError` (the attempt fails).
        """
        return Snooze(seconds)

    def dependency_results(self, *, as_type: Any = None) -> dict[int, Any]:
        """The results of the jobs this one depends on (``depends_on``), by their id.

        In id order; one statement on a pooled connection. Each result is
        what that job returned, as JSON values, or structured into
        ``as_type`` (an attrs class, a dataclass, ``list[int]`` ...) when
        given. A job runs only once all its dependencies succeeded, so each
        has its result; an empty dict for a job without dependencies.

        Raises:
            DependencyResultError: a dependency is no longer kept by the
                history (it finished longer ago than the orchestrator's
                ``finalized_job_threshold_ms``), or was retried after this
                job was released; the error names each such id.
            PayloadError: a result does not fit ``as_type``.

        In an ``async def`` job, use :meth:`dependency_results_async`.
        """
        return _results.dependency_results(self.definition.config, self.job_id, as_type=as_type)

    async def dependency_results_async(self, *, as_type: Any = None) -> dict[int, Any]:
        """Async twin of :meth:`dependency_results`."""
        return await _results.dependency_results_async(
            self.definition.config, self.job_id, as_type=as_type
        )


#: A job function for payloads of type ``P``: it takes ``(payload, ctx)``,
#: ``(payload)`` or nothing; ``def`` or ``async def`` (what it returns is stored
#: as the job's result).
JobFunction: TypeAlias = (
    Callable[[P, JobContext], object] | Callable[[P], object] | Callable[[], object]
)


@attrs.frozen(eq=False, repr=False)
class JobSpec:
    """A job to defer as part of a workflow: made by :meth:`JobDefinition.job`.

    Its arguments were checked when it was made; :func:`orchestra.group`,
    :func:`orchestra.chord` and :func:`orchestra.chain` defer it, in one
    transaction with the rest of their jobs, and set its dependencies.

    Attributes:
        definition: the definition of the job.
    """

    definition: JobDefinition[Any]
    #: The checked parameters of its insert, as ``defer`` would send them
    #: (without dependencies).
    _params: dict[str, Any] = attrs.field(repr=False)

    @property
    def params(self) -> dict[str, Any]:
        """A copy of the insert's parameters, for the workflow to complete."""
        return dict(self._params)

    def __repr__(self) -> str:
        return f"JobSpec({self.definition.name!r}, payload={self._params['payload']})"


def _is_empty_type(payload_type: object) -> bool:
    if payload_type is None:
        return True
    if isinstance(payload_type, type) and attrs.has(payload_type):
        return not attrs.fields(payload_type)
    if isinstance(payload_type, type) and dataclasses.is_dataclass(payload_type):
        return not dataclasses.fields(payload_type)
    return False


class JobDefinition(Generic[P]):
    """A kind of job: its function, its payload type and how it is run.

    Args:
        config: the Config it belongs to; the definition registers itself there.
        name: unique name (at most 128 characters); the key of its row.
        job_function: ``def`` or ``async def`` taking ``(payload)``, ``(payload, ctx)`` or nothing.
        payload_type: an attrs class, dataclass, TypedDict or other type cattrs can
            structure; None for plain JSON.
        channel: the channel whose workers run it.
        num_attempts: attempts before the job is finalized as failed (>= 1).
        backoff: ``none``, ``fixed``, ``exponential`` or a :class:`Backoff`.
        priority: default priority from -100 to 100; higher runs first.
        lock_interval_ms: the lease of a claimed job, extended while its worker lives.
        timeout_interval_ms: the job fails if not finished this long after its
            ``run_at`` (0: never; enforced by the orchestrator).
        release_interval_ms: minimal gap between two starts, fleet-wide (orchestrator).
        max_concurrency: most jobs of this definition running at once (orchestrator).
        repeat_interval_ms: run every this often (orchestrator); no payload allowed.
        cron: run on this cron schedule (orchestrator); no payload allowed.
        cron_timezone: IANA time zone the cron expression is read in (default UTC).
        overlap: with False (default) a tick is skipped while the previous tick's
            job is unfinished; True lets tick jobs pile up.
        dedup: the default of ``defer(dedup=...)``: derive a unique key from the
            payload, so that a second defer of an equal payload while the first
            job is unfinished returns the first job.
        attempt_timeout_ms: cut an attempt that runs longer (async: the task is
            cancelled; processes: the child is terminated; threads, which
            cannot be killed: ``ctx.should_stop`` turns true, and the attempt
            is recorded as timed out once the function returns, keeping its
            slot, lease and resource key until then). None: no limit.
        on_success: called once with the updated :class:`~orchestra.Job` after
            a job succeeded, in the worker process.
        on_failure: called once after the final attempt failed.
        on_attempt: called once after every attempt, whatever its outcome.

    Every interval accepts an int of milliseconds or a ``timedelta``. Bad values
    raise :class:`ConfigurationError` naming the argument.
    """

    # With payload_type, P is that type and the job function must take it.
    # Without, the function receives plain JSON whatever its annotation says,
    # so P is Any: a typed parameter must not make defer() accept that type.
    @overload
    def __init__(
        self: JobDefinition[P],
        config: ManagedDatabase[JobDefinition[Any]],
        *,
        name: str,
        job_function: JobFunction[P],
        payload_type: type[P],
        channel: str = "_default",
        num_attempts: int = 1,
        backoff: str | Backoff = "exponential",
        priority: int = 0,
        lock_interval_ms: int | dt.timedelta = 60_000,
        timeout_interval_ms: int | dt.timedelta = 43_200_000,
        release_interval_ms: int | dt.timedelta = 0,
        max_concurrency: int | None = None,
        repeat_interval_ms: int | dt.timedelta | None = None,
        cron: str | None = None,
        cron_timezone: str | None = None,
        overlap: bool = False,
        dedup: bool = False,
        attempt_timeout_ms: int | dt.timedelta | None = None,
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
        on_attempt: Callback | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: JobDefinition[Any],
        config: ManagedDatabase[JobDefinition[Any]],
        *,
        name: str,
        job_function: JobFunction[Any],
        payload_type: None = None,
        channel: str = "_default",
        num_attempts: int = 1,
        backoff: str | Backoff = "exponential",
        priority: int = 0,
        lock_interval_ms: int | dt.timedelta = 60_000,
        timeout_interval_ms: int | dt.timedelta = 43_200_000,
        release_interval_ms: int | dt.timedelta = 0,
        max_concurrency: int | None = None,
        repeat_interval_ms: int | dt.timedelta | None = None,
        cron: str | None = None,
        cron_timezone: str | None = None,
        overlap: bool = False,
        dedup: bool = False,
        attempt_timeout_ms: int | dt.timedelta | None = None,
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
        on_attempt: Callback | None = None,
    ) -> None: ...

    def __init__(
        self,
        config: ManagedDatabase[JobDefinition[Any]],
        *,
        name: str,
        job_function: JobFunction[P],
        payload_type: type[P] | None = None,
        channel: str = "_default",
        num_attempts: int = 1,
        backoff: str | Backoff = "exponential",
        priority: int = 0,
        lock_interval_ms: int | dt.timedelta = 60_000,
        timeout_interval_ms: int | dt.timedelta = 43_200_000,
        release_interval_ms: int | dt.timedelta = 0,
        max_concurrency: int | None = None,
        repeat_interval_ms: int | dt.timedelta | None = None,
        cron: str | None = None,
        cron_timezone: str | None = None,
        overlap: bool = False,
        dedup: bool = False,
        attempt_timeout_ms: int | dt.timedelta | None = None,
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
        on_attempt: Callback | None = None,
    ) -> None:
        if not isinstance(config, ManagedDatabase):
            raise ConfigurationError(
                "config", f"must be an orchestra Config, not {type(config).__name__}"
            )
        # Typed as the ManagedDatabase that Config is, so that this module
        # need not import the one above it; at run time it is the Config.
        self.config: ManagedDatabase[JobDefinition[Any]] = config
        self.name = check_name(name, "name")
        self.job_function = job_function
        self._arity = _callables.arity(job_function)
        self.is_async = _callables.is_async(job_function)
        self.payload_type = payload_type
        self.channel = check_name(channel, "channel", pattern=_checks.CHANNEL_RE)
        self.num_attempts = check_int(num_attempts, "num_attempts", 1, 1_000_000)
        self.backoff = Backoff.parse(backoff)
        self.priority = check_int(priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
        lock = milliseconds(lock_interval_ms, "lock_interval_ms") or 0
        if lock < LOCK_INTERVAL_MIN_MS:
            raise ConfigurationError(
                "lock_interval_ms", f"must be at least {LOCK_INTERVAL_MIN_MS} ms, got {lock}"
            )
        self.lock_interval_ms = lock
        self.timeout_interval_ms = milliseconds(timeout_interval_ms, "timeout_interval_ms") or 0
        self.release_interval_ms = milliseconds(release_interval_ms, "release_interval_ms") or 0
        self.max_concurrency = (
            None
            if max_concurrency is None
            else check_int(max_concurrency, "max_concurrency", 1, 1_000_000)
        )
        self.repeat_interval_ms = milliseconds(
            repeat_interval_ms, "repeat_interval_ms", allow_none=True
        )
        if self.repeat_interval_ms == 0:
            raise ConfigurationError(
                "repeat_interval_ms", "must be positive (or None for no repeat)"
            )
        self.cron, self.cron_timezone = check_cron(cron, cron_timezone)
        if self.cron is not None and self.repeat_interval_ms is not None:
            raise ConfigurationError("cron", "give either cron or repeat_interval_ms, not both")
        if self.is_repeatable and not _is_empty_type(payload_type):
            raise ConfigurationError(
                "payload_type",
                "a repeatable definition (cron or repeat_interval_ms) takes no payload",
            )
        self.overlap = check_flag(overlap, "overlap")
        self.dedup = check_flag(dedup, "dedup")
        self.attempt_timeout_ms = milliseconds(
            attempt_timeout_ms, "attempt_timeout_ms", allow_none=True
        )
        if self.attempt_timeout_ms == 0:
            raise ConfigurationError(
                "attempt_timeout_ms", "must be positive (or None for no limit)"
            )
        for argument, callback in (
            ("on_success", on_success),
            ("on_failure", on_failure),
            ("on_attempt", on_attempt),
        ):
            if callback is not None and not callable(callback):
                raise ConfigurationError(
                    argument, f"must be callable, got {type(callback).__name__}"
                )
        self.on_success = on_success
        self.on_failure = on_failure
        self.on_attempt = on_attempt
        self._ensured_at: float | None = None
        self._ensure_lock = threading.Lock()
        self._ensure_locks_async = LoopLocks()
        config.register(self)

    @property
    def arity(self) -> int:
        """How many of (payload, ctx) the job function takes: 0, 1 or 2."""
        return self._arity

    @property
    def has_callbacks(self) -> bool:
        """True when a lifecycle callback is set (the worker then reads the job back)."""
        return any(c is not None for c in (self.on_success, self.on_failure, self.on_attempt))

    @property
    def is_repeatable(self) -> bool:
        """True when the orchestrator enqueues this definition on a schedule."""
        return self.cron is not None or self.repeat_interval_ms is not None

    def __repr__(self) -> str:
        return f"JobDefinition(name={self.name!r}, channel={self.channel!r})"

    # -- its row ------------------------------------------------------------

    def row_params(self) -> dict[str, Any]:
        """The parameters of the ``definition_upsert`` query."""
        return {
            "name": self.name,
            "channel": self.channel,
            "num_attempts": self.num_attempts,
            "backoff": self.backoff.kind,
            "backoff_base_ms": self.backoff.base_ms,
            "backoff_max_ms": self.backoff.max_ms,
            "priority": self.priority,
            "repeat_interval_ms": self.repeat_interval_ms,
            "cron": self.cron,
            "release_interval_ms": self.release_interval_ms,
            "max_concurrency": self.max_concurrency,
            "lock_interval_ms": self.lock_interval_ms,
            "timeout_interval_ms": self.timeout_interval_ms,
        }

    def upsert(self, conn: psycopg.Connection[Any]) -> None:
        """Write this definition's row (last writer wins): what daemons do at start."""
        _ops.run(conn, self.config.queries, self._write_row("definition_upsert"))

    async def upsert_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Async twin of :meth:`upsert`."""
        await _ops.run_async(conn, self.config.queries, self._write_row("definition_upsert"))

    def ensure(self, conn: psycopg.Connection[Any]) -> None:
        """Write this definition's row if it is missing, else refresh its heartbeat.

        What ``defer`` does. The settings of an existing row are left to the
        daemons that run the definition (:meth:`upsert`), so a producer with
        an older copy of them cannot change a lease or a limit under running
        jobs, and needs no write privilege on definitions (decision 0018).
        """
        _ops.run(conn, self.config.queries, self._ensure_op())

    async def ensure_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Async twin of :meth:`ensure`."""
        await _ops.run_async(conn, self.config.queries, self._ensure_op())

    def _ensure_op(self) -> Op[None]:
        """What :meth:`ensure` sends, as an operation (see :mod:`orchestra._ops`)."""
        return self._write_row("definition_ensure")

    def _forget_ensured(self) -> None:
        """The row was found missing: write it again before the next defer."""
        self._ensured_at = None

    def _write_row(self, query: str) -> Op[None]:
        yield Statement(query, self.row_params(), "none")
        self._ensured_at = time.monotonic()

    def _needs_ensure(self) -> bool:
        return (
            self._ensured_at is None or time.monotonic() - self._ensured_at > DEFINITION_REFRESH_S
        )

    def _ensure(self) -> None:
        # Written on its own pooled autocommit connection, never inside the
        # caller's transaction: a rollback there must not undo it behind our cache.
        if self._needs_ensure():
            with self._ensure_lock, self.config.connection() as conn:
                if self._needs_ensure():
                    self.ensure(conn)

    async def _ensure_async(self) -> None:
        # One ensure per event loop at a time, as the lock above does for
        # threads: concurrent first defers wait for it instead of each
        # sending one.
        if self._needs_ensure():
            async with self._ensure_locks_async.lock():
                if self._needs_ensure():
                    async with self.config.connection_async() as conn:
                        await self.ensure_async(conn)

    # -- defer --------------------------------------------------------------

    def _encode(self, payload: Any) -> str:
        if payload is None and self.is_repeatable:
            # Repeatable definitions have an empty payload type: build it.
            payload = {} if self.payload_type is None else self.payload_type()
        return _converter.encode_payload(
            payload,
            payload_type=self.payload_type,
            owner=self.name,
            max_bytes=self.config.max_payload_bytes,
        )

    def _options(
        self,
        delay_ms: int | dt.timedelta,
        run_at: dt.datetime | None,
        priority: int | None,
        resource_key: str | None,
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The parameters shared by single and batch inserts, validated."""
        delay = milliseconds(delay_ms, "delay_ms") or 0
        if run_at is not None:
            if not isinstance(run_at, dt.datetime) or run_at.tzinfo is None:
                raise ConfigurationError("run_at", "must be a timezone-aware datetime")
            if delay:
                raise ConfigurationError("run_at", "give either run_at or delay_ms, not both")
        if priority is not None:
            check_int(priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
        return {
            "definition": self.name,
            "channel": self.channel,
            "priority": self.priority if priority is None else priority,
            "max_attempts": self.num_attempts,
            "run_at": run_at,
            "delay_ms": delay,
            "resource_key": None
            if resource_key is None
            else check_key(resource_key, "resource_key"),
            "notify_channel": self.config.notify_channel,
            "trace_context": _defer.current_trace_context(),
            "tags": check_tags(tags),
            "meta": "{}" if meta is None else encode_meta(meta),
        }

    def _insert_params(
        self,
        payload: Any,
        delay_ms: int | dt.timedelta,
        run_at: dt.datetime | None,
        priority: int | None,
        depends_on: Iterable[JobHandle | int],
        unique_key: str | None,
        dedup: bool | None,
        resource_key: str | None,
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        params = self._options(delay_ms, run_at, priority, resource_key, tags, meta)
        params["payload"] = self._encode(payload)
        params["depends_on"] = _defer.dependency_ids(depends_on)
        if dedup is not None and not isinstance(dedup, bool):
            raise ConfigurationError("dedup", f"must be True, False or None, not {dedup!r}")
        if unique_key is not None:
            if dedup:
                raise ConfigurationError("dedup", "give either unique_key or dedup=True, not both")
            params["unique_key"] = check_key(unique_key, "unique_key")
        elif self.dedup if dedup is None else dedup:
            params["unique_key"] = _defer.dedup_key(params["payload"])
        else:
            params["unique_key"] = None
        return params

    def _many_params(
        self,
        payloads: Iterable[P],
        delay_ms: int | dt.timedelta,
        run_at: dt.datetime | None,
        priority: int | None,
        resource_key: str | None,
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        params = self._options(delay_ms, run_at, priority, resource_key, tags, meta)
        if isinstance(payloads, (str, bytes, dict)):
            raise ConfigurationError(
                "payloads", "must be an iterable of payloads, not a single value"
            )
        params["payloads"] = [self._encode(p) for p in payloads]
        return params

    def defer(
        self,
        payload: P | None = None,
        *,
        delay_ms: int | dt.timedelta = 0,
        run_at: dt.datetime | None = None,
        priority: int | None = None,
        depends_on: Iterable[JobHandle | int] = (),
        unique_key: str | None = None,
        dedup: bool | None = None,
        resource_key: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> JobHandle:
        """Enqueue one job and return its handle.

        With ``conn``, the job is inserted in that connection's current
        transaction and exists only if it commits. Every argument is checked
        before anything is written; a dependency id that does not exist raises
        :class:`UnknownJobError` and inserts nothing.

        A job with dependencies starts as soon as the last one succeeds. With
        ``conn``, if a dependency succeeds while your transaction is still
        open, the orchestrator's finalizer releases the job instead (within
        ``finalize_interval_ms``): orchestra cannot act after your commit.

        Deduplication: with ``unique_key``, or ``dedup=True`` (the key is
        a hash of the payload with object keys sorted), while an unfinished job
        of this definition holds the key, no job is inserted and that job's
        handle comes back with ``deduplicated=True`` (its own delay, priority
        and dependencies stand). A unique index decides, so concurrent
        producers cannot both insert. Once the holder is finalized the key is
        free again.

        ``resource_key``: at most one job per key runs at a time, fleet-wide,
        whatever its definition. A job waiting for its key is not failed
        and spends no attempt.

        ``tags``: labels to find the job by (``config.jobs.list(tag=...)``,
        ``orchestra jobs list --tag``, the dashboard): at most 20 distinct
        printable strings of at most 100 characters. ``meta``: a dict of your
        own stored with the job (at most 8 KiB as JSON), read back by the job
        as ``ctx.meta`` and shown with it. A bad value raises
        ConfigurationError naming ``tags`` or ``meta``; nothing is written.
        """
        params = self._insert_params(
            payload,
            delay_ms,
            run_at,
            priority,
            depends_on,
            unique_key,
            dedup,
            resource_key,
            tags,
            meta,
        )
        self._ensure()
        if conn is not None:
            handle = _ops.run(conn, self.config.queries, _defer.insert_one(self, params, own=False))
        else:
            with self.config.connection() as own:
                handle = _ops.run(
                    own, self.config.queries, _defer.insert_one(self, params, own=True)
                )
        hooks = _defer.defer_hooks.get()
        if hooks:  # orchestra.testing.inline: run the job now
            for hook in hooks:
                hook._after_defer(self, (handle,), conn)
        return handle

    async def defer_async(
        self,
        payload: P | None = None,
        *,
        delay_ms: int | dt.timedelta = 0,
        run_at: dt.datetime | None = None,
        priority: int | None = None,
        depends_on: Iterable[JobHandle | int] = (),
        unique_key: str | None = None,
        dedup: bool | None = None,
        resource_key: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> JobHandle:
        """Async twin of :meth:`defer`."""
        params = self._insert_params(
            payload,
            delay_ms,
            run_at,
            priority,
            depends_on,
            unique_key,
            dedup,
            resource_key,
            tags,
            meta,
        )
        await self._ensure_async()
        queries = self.config.queries
        if conn is not None:
            handle = await _ops.run_async(conn, queries, _defer.insert_one(self, params, own=False))
        else:
            async with self.config.connection_async() as own:
                handle = await _ops.run_async(
                    own, queries, _defer.insert_one(self, params, own=True)
                )
        hooks = _defer.defer_hooks.get()
        if hooks:
            for hook in hooks:
                await hook._after_defer_async(self, (handle,), conn)
        return handle

    def defer_many(
        self,
        payloads: Iterable[P],
        *,
        delay_ms: int | dt.timedelta = 0,
        run_at: dt.datetime | None = None,
        priority: int | None = None,
        resource_key: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[JobHandle]:
        """Enqueue many jobs in one statement: all of them or, on any error, none.

        Every payload is checked before anything is sent; handles come back in
        the order of ``payloads``. ``resource_key``, ``tags`` and ``meta``
        apply to every job (with a resource key they run one at a time).
        Deduplication is per job: use :meth:`defer`.
        """
        params = self._many_params(payloads, delay_ms, run_at, priority, resource_key, tags, meta)
        if not params["payloads"]:
            return []
        self._ensure()
        if conn is not None:
            handles = _ops.run(
                conn, self.config.queries, _defer.insert_many(self, params, own=False)
            )
        else:
            with self.config.connection() as own:
                handles = _ops.run(
                    own, self.config.queries, _defer.insert_many(self, params, own=True)
                )
        hooks = _defer.defer_hooks.get()
        if hooks:
            for hook in hooks:
                hook._after_defer(self, handles, conn)
        return handles

    async def defer_many_async(
        self,
        payloads: Iterable[P],
        *,
        delay_ms: int | dt.timedelta = 0,
        run_at: dt.datetime | None = None,
        priority: int | None = None,
        resource_key: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[JobHandle]:
        """Async twin of :meth:`defer_many`."""
        params = self._many_params(payloads, delay_ms, run_at, priority, resource_key, tags, meta)
        if not params["payloads"]:
            return []
        await self._ensure_async()
        queries = self.config.queries
        if conn is not None:
            handles = await _ops.run_async(
                conn, queries, _defer.insert_many(self, params, own=False)
            )
        else:
            async with self.config.connection_async() as own:
                handles = await _ops.run_async(
                    own, queries, _defer.insert_many(self, params, own=True)
                )
        hooks = _defer.defer_hooks.get()
        if hooks:
            for hook in hooks:
                await hook._after_defer_async(self, handles, conn)
        return handles

    def job(
        self,
        payload: P | None = None,
        *,
        delay_ms: int | dt.timedelta = 0,
        run_at: dt.datetime | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        dedup: bool | None = None,
        resource_key: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> JobSpec:
        """A job of this definition to defer as part of a workflow, not deferred yet.

        For :func:`orchestra.group`, :func:`orchestra.chord` and
        :func:`orchestra.chain`, which defer their jobs in one transaction and
        set their dependencies. Takes what :meth:`defer` takes but
        ``depends_on`` (the workflow sets it) and ``conn`` (the workflow's
        own); every argument is checked here, so a bad one raises before
        anything of the workflow is written.
        """
        params = self._insert_params(
            payload,
            delay_ms,
            run_at,
            priority,
            (),
            unique_key,
            dedup,
            resource_key,
            tags=tags,
            meta=meta,
        )
        return JobSpec(self, params)

    # -- execution ----------------------------------------------------------

    def call(self, payload: Any, ctx: JobContext) -> Any:
        """Call the job function with the arguments it takes."""
        return _callables.call(self.job_function, self._arity, payload, ctx)
