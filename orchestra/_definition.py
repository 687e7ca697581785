"""JobDefinition (settings + defer), JobHandle and JobContext."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import logging
import re
import sys
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic

import attrs
import psycopg
from croniter import croniter
from typing_extensions import TypeVar

from orchestra import _converter, _results
from orchestra._backoff import Backoff, milliseconds
from orchestra._names import check_printable
from orchestra.errors import ConfigurationError, OrchestraError, UnknownJobError

if TYPE_CHECKING:
    import opentelemetry.trace

    from orchestra._config import Config
    from orchestra._jobs import Job

# OpenTelemetry is optional (extra ``otel``) and never imported by orchestra
# itself at import time: a span can only be current if the application has
# imported opentelemetry already, so current_trace_context looks it up in
# sys.modules and pays one dict lookup when it is absent.
_OTEL_TRACE = "opentelemetry.trace"

# The payload type; Any when a definition declares none (plain JSON).
P = TypeVar("P", default=Any)
#: A lifecycle callback: receives the updated job (orchestra.Job); ``def`` or
#: ``async def``; what it returns is ignored.
Callback = Callable[["Job"], Any]

NAME_MAX_LENGTH = 128
#: Unique and resource keys are indexed: keep them well under the btree limit.
KEY_MAX_LENGTH = 512
#: Insert attempts when a unique key's holder is finalized between the insert
#: and the lookup of the holder.
UNIQUE_RETRIES = 5
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
PRIORITY_MIN, PRIORITY_MAX = -100, 100
LOCK_INTERVAL_MIN_MS = 500
#: How often a process re-upserts a definition it defers to, so that a
#: definition swept as stale while this process was idle comes back before the
#: next insert needs it (a job row refers to its definition, so the insert
#: would fail without it). Far below the stale threshold (1 h).
DEFINITION_REFRESH_S = 600.0

logger = logging.getLogger("orchestra")
#: Tries of the re-check of a waiting job's dependencies after its defer
#: committed (it can lose a deadlock to a worker finishing them).
RECHECK_TRIES = 3


@attrs.frozen
class JobHandle:
    """A reference to a deferred job. Rebuild one from an id with ``JobHandle(id, config)``.

    Attributes:
        id: the job's id.
        deduplicated: True when ``defer`` found an unfinished job holding the
            same unique key and returned it instead of inserting a new one.
    """

    id: int
    config: Config = attrs.field(eq=False, repr=False)
    deduplicated: bool = attrs.field(default=False, eq=False, kw_only=True)

    def result(
        self,
        timeout: float | None = None,
        *,
        as_type: Any = None,
        poll_interval_s: float = _results.POLL_INTERVAL_S_DEFAULT,
    ) -> Any:
        """Wait for the job to finish and return what its function returned.

        Args:
            timeout: seconds to wait; None waits as long as it takes.
            as_type: structure the stored JSON into this type (an attrs class,
                a dataclass ...); None returns plain JSON values.
            poll_interval_s: how often the row is re-read should a
                notification be lost.

        Raises:
            JobFailed: the job finally failed or was cancelled (carries the last error).
            ResultTimeoutError: still unfinished after ``timeout``; ask again later.
            UnknownJobError: no such job (never deferred, or swept without archive).
        """
        return _results.wait(
            self.config,
            self.id,
            timeout=timeout,
            as_type=as_type,
            poll_interval_s=poll_interval_s,
        )

    async def result_async(
        self,
        # Same signature as result(): the timeout is the wait's own, reported
        # in ResultTimeoutError with the job's status, not a cancellation.
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        as_type: Any = None,
        poll_interval_s: float = _results.POLL_INTERVAL_S_DEFAULT,
    ) -> Any:
        """Async twin of :meth:`result`."""
        return await _results.wait_async(
            self.config,
            self.id,
            timeout=timeout,
            as_type=as_type,
            poll_interval_s=poll_interval_s,
        )

    def status(self) -> str:
        """The job's current status (``waiting``, ``available``, ``running``, ``succeeded`` ...)."""
        with self.config.connection() as conn:
            row = conn.execute(self.config.queries["job_status"], {"id": self.id}).fetchone()
        if row is None:
            raise UnknownJobError((self.id,))
        return str(row[0])

    def __int__(self) -> int:
        return self.id


class JobContext:
    """What a job function may know about the attempt it runs in.

    Attributes:
        job_id: the job's id.
        attempt: this attempt's number, from 1.
        max_attempts: the job's attempt budget.
        definition: the JobDefinition being run.
        logger: a logger that tags every record with the job id.
    """

    __slots__ = ("_cut", "_stop", "attempt", "definition", "job_id", "logger", "max_attempts")

    def __init__(
        self,
        *,
        job_id: int,
        attempt: int,
        max_attempts: int,
        definition: JobDefinition[Any],
        stop: threading.Event,
        cut: threading.Event | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.definition = definition
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"orchestra.job.{definition.name}"),
            {"job_id": job_id, "attempt": attempt},
        )
        self._stop = stop
        self._cut = cut

    @property
    def should_stop(self) -> bool:
        """True once the worker is shutting down or this attempt ran past its
        ``attempt_timeout_ms``: a long job should wrap up and return or raise."""
        return self._stop.is_set() or (self._cut is not None and self._cut.is_set())


def _check_name(value: object, argument: str, *, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(argument, "must be a non-empty string")
    if len(value) > NAME_MAX_LENGTH:
        raise ConfigurationError(
            argument, f"must be at most {NAME_MAX_LENGTH} characters, got {len(value)}"
        )
    # Names and channels are printed in logs, terminals and pages: no line breaks,
    # escape sequences or bidi overrides that could forge or disguise a line.
    check_printable(value, argument)
    if pattern is not None and not pattern.fullmatch(value):
        raise ConfigurationError(argument, f"{value!r} may only use letters, digits and _ . : -")
    return value


def _check_int(value: object, argument: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(argument, f"must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigurationError(argument, f"must be {bound}, got {value}")
    return value


def _function_arity(function: object) -> int:
    if not callable(function):
        raise ConfigurationError("job_function", f"must be callable, got {type(function).__name__}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return 2  # builtins and C callables: assume (payload, ctx)
    parameters = list(signature.parameters.values())
    required_keywords = [
        p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    if required_keywords:
        raise ConfigurationError(
            "job_function",
            f"has required keyword-only parameters {required_keywords}: "
            "orchestra calls it with (payload), (payload, ctx) or nothing",
        )
    required = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) > 2:
        raise ConfigurationError(
            "job_function", "must take (payload), (payload, ctx) or nothing; it requires more"
        )
    # Only required parameters are filled: ``def f(payload, retries=3)`` must
    # not receive a JobContext as ``retries``. ``*args`` takes (payload, ctx).
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return 2
    return len(required)


def _is_empty_type(payload_type: object) -> bool:
    if payload_type is None:
        return True
    if isinstance(payload_type, type) and attrs.has(payload_type):
        return not attrs.fields(payload_type)
    if isinstance(payload_type, type) and dataclasses.is_dataclass(payload_type):
        return not dataclasses.fields(payload_type)
    return False


def _check_cron(expression: object, timezone: object) -> tuple[str | None, str | None]:
    if expression is None:
        if timezone is not None:
            raise ConfigurationError("cron_timezone", "is only meaningful with cron")
        return None, None
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ConfigurationError("cron", f"{expression!r} is not a valid cron expression")
    if timezone is not None:
        if not isinstance(timezone, str):
            raise ConfigurationError(
                "cron_timezone", "must be an IANA time zone name such as 'Europe/Paris'"
            )
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError("cron_timezone", f"unknown time zone {timezone!r}") from None
    return expression, timezone


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

    def __init__(
        self,
        config: Config,
        *,
        name: str,
        job_function: Callable[..., Any],
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
        from orchestra._config import Config  # noqa: PLC0415 (import cycle at module level)

        if not isinstance(config, Config):
            raise ConfigurationError(
                "config", f"must be an orchestra Config, not {type(config).__name__}"
            )
        self.config = config
        self.name = _check_name(name, "name")
        self.job_function = job_function
        self._arity = _function_arity(job_function)
        # An instance with an ``async def __call__`` is async too.
        self.is_async = inspect.iscoroutinefunction(job_function) or (
            not inspect.isroutine(job_function)
            and inspect.iscoroutinefunction(type(job_function).__call__)
        )
        self.payload_type = payload_type
        self.channel = _check_name(channel, "channel", pattern=CHANNEL_RE)
        self.num_attempts = _check_int(num_attempts, "num_attempts", 1, 1_000_000)
        self.backoff = Backoff.parse(backoff)
        self.priority = _check_int(priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
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
            else _check_int(max_concurrency, "max_concurrency", 1, 1_000_000)
        )
        self.repeat_interval_ms = milliseconds(
            repeat_interval_ms, "repeat_interval_ms", allow_none=True
        )
        if self.repeat_interval_ms == 0:
            raise ConfigurationError(
                "repeat_interval_ms", "must be positive (or None for no repeat)"
            )
        self.cron, self.cron_timezone = _check_cron(cron, cron_timezone)
        if self.cron is not None and self.repeat_interval_ms is not None:
            raise ConfigurationError("cron", "give either cron or repeat_interval_ms, not both")
        if self.is_repeatable and not _is_empty_type(payload_type):
            raise ConfigurationError(
                "payload_type",
                "a repeatable definition (cron or repeat_interval_ms) takes no payload",
            )
        if not isinstance(overlap, bool):
            raise ConfigurationError("overlap", f"must be True or False, not {overlap!r}")
        self.overlap = overlap
        if not isinstance(dedup, bool):
            raise ConfigurationError("dedup", f"must be True or False, not {dedup!r}")
        self.dedup = dedup
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

    # -- storage ------------------------------------------------------------

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
        conn.execute(self.config.queries["definition_upsert"], self.row_params())
        self._ensured_at = time.monotonic()

    async def upsert_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Async twin of :meth:`upsert`."""
        await conn.execute(self.config.queries["definition_upsert"], self.row_params())
        self._ensured_at = time.monotonic()

    def ensure(self, conn: psycopg.Connection[Any]) -> None:
        """Write this definition's row if it is missing, else refresh its heartbeat.

        What ``defer`` does. The settings of an existing row are left to the
        daemons that run the definition (:meth:`upsert`), so a producer with
        an older copy of them cannot change a lease or a limit under running
        jobs, and needs no write privilege on definitions (decision 0018).
        """
        conn.execute(self.config.queries["definition_ensure"], self.row_params())
        self._ensured_at = time.monotonic()

    async def ensure_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Async twin of :meth:`ensure`."""
        await conn.execute(self.config.queries["definition_ensure"], self.row_params())
        self._ensured_at = time.monotonic()

    def _needs_upsert(self) -> bool:
        return (
            self._ensured_at is None or time.monotonic() - self._ensured_at > DEFINITION_REFRESH_S
        )

    def _ensure(self) -> None:
        # Written on its own pooled autocommit connection, never inside the
        # caller's transaction: a rollback there must not undo it behind our cache.
        if self._needs_upsert():
            with self._ensure_lock, self.config.connection() as conn:
                if self._needs_upsert():
                    self.ensure(conn)

    async def _ensure_async(self) -> None:
        if self._needs_upsert():
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
    ) -> dict[str, Any]:
        """The parameters shared by single and batch inserts, validated."""
        delay = milliseconds(delay_ms, "delay_ms") or 0
        if run_at is not None:
            if not isinstance(run_at, dt.datetime) or run_at.tzinfo is None:
                raise ConfigurationError("run_at", "must be a timezone-aware datetime")
            if delay:
                raise ConfigurationError("run_at", "give either run_at or delay_ms, not both")
        if priority is not None:
            _check_int(priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
        return {
            "definition": self.name,
            "channel": self.channel,
            "priority": self.priority if priority is None else priority,
            "max_attempts": self.num_attempts,
            "run_at": run_at,
            "delay_ms": delay,
            "resource_key": None
            if resource_key is None
            else _check_key(resource_key, "resource_key"),
            "notify_channel": self.config.notify_channel,
            "trace_context": current_trace_context(),
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
    ) -> dict[str, Any]:
        params = self._options(delay_ms, run_at, priority, resource_key)
        params["payload"] = self._encode(payload)
        params["depends_on"] = _dependency_ids(depends_on)
        if dedup is not None and not isinstance(dedup, bool):
            raise ConfigurationError("dedup", f"must be True, False or None, not {dedup!r}")
        if unique_key is not None:
            if dedup:
                raise ConfigurationError("dedup", "give either unique_key or dedup=True, not both")
            params["unique_key"] = _check_key(unique_key, "unique_key")
        elif self.dedup if dedup is None else dedup:
            params["unique_key"] = dedup_key(params["payload"])
        else:
            params["unique_key"] = None
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
        """
        params = self._insert_params(
            payload, delay_ms, run_at, priority, depends_on, unique_key, dedup, resource_key
        )
        self._ensure()
        if conn is not None:
            return self._insert_one(conn, params, own=False)
        with self.config.connection() as own:
            return self._insert_one(own, params, own=True)

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
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> JobHandle:
        """Async twin of :meth:`defer`."""
        params = self._insert_params(
            payload, delay_ms, run_at, priority, depends_on, unique_key, dedup, resource_key
        )
        await self._ensure_async()
        if conn is not None:
            return await self._insert_one_async(conn, params, own=False)
        async with self.config.connection_async() as own:
            return await self._insert_one_async(own, params, own=True)

    def _insert_one(
        self, conn: psycopg.Connection[Any], params: dict[str, Any], *, own: bool
    ) -> JobHandle:
        """Insert, or find the holder of the unique key; see :meth:`defer`."""
        queries = self.config.queries
        query = queries["job_insert" if params["depends_on"] else "job_insert_simple"]
        for _ in range(UNIQUE_RETRIES):
            row = self._insert(conn, query, params, own=own)
            if row is not None:
                if own and row[1] == "waiting":
                    # Committed: close the race with a finishing dependency.
                    for attempt in range(RECHECK_TRIES):
                        try:
                            conn.execute(queries["job_recheck_waiting"], self._recheck_params(row))
                            break
                        except psycopg.errors.DeadlockDetected:
                            self._recheck_deadlocked(row, attempt)
                return JobHandle(int(row[0]), self.config)
            wanted = params["depends_on"]
            if wanted:
                found = conn.execute(queries["job_ids_existing"], {"ids": wanted}).fetchall()
                self._check_found((r[0] for r in found), wanted, params)
            holder = conn.execute(queries["job_find_unique"], params).fetchone()
            if holder is not None:
                return JobHandle(int(holder[0]), self.config, deduplicated=True)
            # The holder was finalized between the two statements: insert again.
        raise self._contended(params)

    async def _insert_one_async(
        self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any], *, own: bool
    ) -> JobHandle:
        queries = self.config.queries
        query = queries["job_insert" if params["depends_on"] else "job_insert_simple"]
        for _ in range(UNIQUE_RETRIES):
            row = await self._insert_async(conn, query, params, own=own)
            if row is not None:
                if own and row[1] == "waiting":
                    for attempt in range(RECHECK_TRIES):
                        try:
                            await conn.execute(
                                queries["job_recheck_waiting"], self._recheck_params(row)
                            )
                            break
                        except psycopg.errors.DeadlockDetected:
                            self._recheck_deadlocked(row, attempt)
                return JobHandle(int(row[0]), self.config)
            wanted = params["depends_on"]
            if wanted:
                cursor = await conn.execute(queries["job_ids_existing"], {"ids": wanted})
                self._check_found((r[0] for r in await cursor.fetchall()), wanted, params)
            cursor = await conn.execute(queries["job_find_unique"], params)
            holder = await cursor.fetchone()
            if holder is not None:
                return JobHandle(int(holder[0]), self.config, deduplicated=True)
        raise self._contended(params)

    def _many_params(
        self,
        payloads: Iterable[P],
        delay_ms: int | dt.timedelta,
        run_at: dt.datetime | None,
        priority: int | None,
        resource_key: str | None,
    ) -> dict[str, Any]:
        params = self._options(delay_ms, run_at, priority, resource_key)
        if isinstance(payloads, (str, bytes, dict)):
            raise ConfigurationError(
                "payloads", "must be an iterable of payloads, not a single value"
            )
        params["payloads"] = [self._encode(p) for p in payloads]
        return params

    def defer_many(
        self,
        payloads: Iterable[P],
        *,
        delay_ms: int | dt.timedelta = 0,
        run_at: dt.datetime | None = None,
        priority: int | None = None,
        resource_key: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[JobHandle]:
        """Enqueue many jobs in one statement: all of them or, on any error, none.

        Every payload is checked before anything is sent; handles come back in
        the order of ``payloads``. ``resource_key`` applies to every job (they
        then run one at a time). Deduplication is per job: use :meth:`defer`.
        """
        params = self._many_params(payloads, delay_ms, run_at, priority, resource_key)
        if not params["payloads"]:
            return []
        self._ensure()
        query = self.config.queries["job_insert_many"]
        if conn is not None:
            row = self._insert(conn, query, params, own=False)
        else:
            with self.config.connection() as own:
                row = self._insert(own, query, params, own=True)
        ids: Sequence[int] = row[0] if row else []
        return [JobHandle(int(i), self.config) for i in ids]

    async def defer_many_async(
        self,
        payloads: Iterable[P],
        *,
        delay_ms: int | dt.timedelta = 0,
        run_at: dt.datetime | None = None,
        priority: int | None = None,
        resource_key: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[JobHandle]:
        """Async twin of :meth:`defer_many`."""
        params = self._many_params(payloads, delay_ms, run_at, priority, resource_key)
        if not params["payloads"]:
            return []
        await self._ensure_async()
        query = self.config.queries["job_insert_many"]
        if conn is not None:
            row = await self._insert_async(conn, query, params, own=False)
        else:
            async with self.config.connection_async() as own:
                row = await self._insert_async(own, query, params, own=True)
        ids: Sequence[int] = row[0] if row else []
        return [JobHandle(int(i), self.config) for i in ids]

    # -- insert helpers -----------------------------------------------------

    def _insert(
        self, conn: psycopg.Connection[Any], query: bytes, params: dict[str, Any], *, own: bool
    ) -> tuple[Any, ...] | None:
        row = conn.execute(query, params).fetchone()
        if _inserted_nothing(row) and not self._definition_present(
            conn.execute(self.config.queries["definition_exists"], {"name": self.name}).fetchone()
        ):
            # The definition row vanished while this process believed it present
            # (swept as stale, or deleted by hand): write it again.
            self._ensured_at = None
            if not own:
                raise self._definition_missing()
            self.ensure(conn)
            row = conn.execute(query, params).fetchone()
        return row

    async def _insert_async(
        self, conn: psycopg.AsyncConnection[Any], query: bytes, params: dict[str, Any], *, own: bool
    ) -> tuple[Any, ...] | None:
        row = await (await conn.execute(query, params)).fetchone()
        if _inserted_nothing(row):
            cursor = await conn.execute(
                self.config.queries["definition_exists"], {"name": self.name}
            )
            if not self._definition_present(await cursor.fetchone()):
                self._ensured_at = None
                if not own:
                    raise self._definition_missing()
                await self.ensure_async(conn)
                row = await (await conn.execute(query, params)).fetchone()
        return row

    @staticmethod
    def _definition_present(row: tuple[Any, ...] | None) -> bool:
        return row is not None and bool(row[0])

    def _recheck_deadlocked(self, row: tuple[Any, ...], attempt: int) -> None:
        """The re-check lost a deadlock to a worker finishing the dependencies.

        The job is committed whatever happens here: the defer must not fail. The
        re-check runs again; after the last try the orchestrator's finalizer
        releases the job (its catch-up) once its dependencies have succeeded.
        """
        if attempt + 1 == RECHECK_TRIES:
            logger.warning(
                "job %d of %r: its dependencies could not be re-checked (deadlock with a "
                "finishing worker, %d tries); the orchestrator releases it once they succeed",
                row[0],
                self.name,
                RECHECK_TRIES,
            )

    def _recheck_params(self, row: tuple[Any, ...]) -> dict[str, Any]:
        return {"id": row[0], "notify_channel": self.config.notify_channel}

    def _definition_missing(self) -> OrchestraError:
        return OrchestraError(
            f"definition {self.name!r} is missing from the database (swept or deleted); "
            "nothing was inserted: defer again (outside your transaction, or after it), "
            "and the definition will be written again first"
        )

    def _check_found(
        self, present: Iterable[int], wanted: list[int], params: dict[str, Any]
    ) -> None:
        """Raise UnknownJobError naming the missing dependencies, if any is missing.

        Without a unique key, an insert that came back empty can only mean a
        missing dependency: then all of them are named if none is found missing
        (it was deleted between the two statements).
        """
        found = set(present)
        missing = tuple(i for i in wanted if i not in found)
        if missing or params["unique_key"] is None:
            raise UnknownJobError(missing or tuple(wanted), "depends_on")

    def _contended(self, params: dict[str, Any]) -> OrchestraError:
        return OrchestraError(
            f"defer of {self.name!r}: unique key {params['unique_key']!r} is taken and freed "
            f"again faster than it can be read ({UNIQUE_RETRIES} tries); nothing was inserted"
        )

    # -- execution ----------------------------------------------------------

    def call(self, payload: Any, ctx: JobContext) -> Any:
        """Call the job function with the arguments it takes."""
        if self._arity == 2:
            return self.job_function(payload, ctx)
        if self._arity == 1:
            return self.job_function(payload)
        return self.job_function()


def _inserted_nothing(row: tuple[Any, ...] | None) -> bool:
    """Whether an insert statement's row says nothing was inserted.

    job_insert and job_insert_simple return no row, job_insert_many an empty
    array of ids: a unique key held, a dependency missing, or the definition
    row missing (the inserts read it, so that they insert nothing without it).
    """
    return row is None or (isinstance(row[0], list) and not row[0])


def current_trace_context() -> str | None:
    """The current OpenTelemetry context as stored with a deferred job, or None.

    None unless opentelemetry is installed and the caller is inside a valid
    span. Otherwise the globally configured propagator (W3C trace context by
    default) injects its carrier, stored as compact JSON text such as
    ``{"traceparent":"00-...-...-01"}`` (plus ``tracestate`` and whatever else
    the propagator writes). :mod:`orchestra.otel` extracts it on the worker.
    """
    trace = sys.modules.get(_OTEL_TRACE)
    if trace is None:
        return None  # not imported by anyone: no span can be current
    span: opentelemetry.trace.Span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    import opentelemetry.propagate  # noqa: PLC0415 (optional; cached after the first defer)

    carrier: dict[str, str] = {}
    opentelemetry.propagate.inject(carrier)
    if not carrier:
        return None  # a no-op propagator (OTEL_PROPAGATORS=none)
    return json.dumps(carrier, separators=(",", ":"), sort_keys=True)


def dedup_key(payload_json: str) -> str:
    """The unique key ``dedup=True`` derives from a payload.

    Equal JSON values give one key: object key order does not matter, and a
    number is a number however it is written (``1``, ``1.0`` and ``1e0`` are
    equal, as in a jsonb comparison). Payloads without integral floats hash
    exactly as before this rule, so existing keys stay valid.
    """
    value = json.loads(payload_json, parse_float=_integral_as_int)
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _integral_as_int(text: str) -> float | int:
    number = float(text)
    return int(number) if number.is_integer() else number


def _check_key(value: object, argument: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(argument, f"must be a non-empty string, not {value!r}")
    if len(value) > KEY_MAX_LENGTH:
        raise ConfigurationError(
            argument, f"must be at most {KEY_MAX_LENGTH} characters, got {len(value)}"
        )
    if "\x00" in value:
        raise ConfigurationError(argument, "must not contain NUL characters")
    return value


def _dependency_ids(depends_on: Iterable[JobHandle | int]) -> list[int]:
    if isinstance(depends_on, (str, bytes)):
        raise ConfigurationError("depends_on", "must be an iterable of JobHandle or int")
    ids: list[int] = []
    for item in depends_on:
        value = item.id if isinstance(item, JobHandle) else item
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigurationError(
                "depends_on", f"{item!r} is not a job handle or a positive job id"
            )
        if value not in ids:
            ids.append(value)
    return ids
