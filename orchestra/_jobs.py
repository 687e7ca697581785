"""Job handles and job management: find, list, count, retry, cancel and delete jobs.

A :class:`JobHandle` names one deferred job by id. The management API is
reached as ``config.jobs`` (:class:`Jobs`) and ``config.jobs_async``
(:class:`AsyncJobs`), and used by the ``orchestra jobs`` and ``orchestra
definitions`` commands. :class:`ManagedDatabase` is a Database with both:
what ``orchestra.Config`` is, named here so that definitions and handles can
type their ``config`` without importing the Config above them. What the
management API promises:

* failed jobs can be listed, retried (back to available, with a fresh
  attempt budget) or deleted, one by one or in bulk;
* find by id, list by status with limit, offset and order, and no hidden
  time window: every job the queue holds is listed, however old, finished
  ones included for as long as the history keeps them.

Unfinished jobs are rows of the hot table ``job``, finished ones rows of
``job_history``; every read sees both. Every change is one SQL statement
(``orchestra/sql/manage.sql``) that locks the job and re-checks its state, so
it cannot race a worker claiming or finishing the job at the same moment, and
that reports the state it found: an unknown id raises
:class:`~orchestra.errors.UnknownJobError`, a job in the wrong state
:class:`~orchestra.errors.JobStateError`, and nothing is written either way.

How the twins share their logic: each operation is written once, as a
generator of statements (:mod:`orchestra._ops`) that checks its arguments,
receives the rows (or the database error) of each statement, and turns rows
into values or errors. :class:`Jobs` and :class:`AsyncJobs` only run those
generators on a sync or an async connection.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Generator, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import psycopg

from orchestra import _converter, _ops, _results
from orchestra._checks import check_int, check_tags, is_int
from orchestra._database import D, Database
from orchestra._ops import Op, Row, Statement
from orchestra._pause import AsyncChannels, AsyncDefinitions, Channels, Definitions
from orchestra._records import (
    STATUSES,
    DefinitionInfo,
    Job,
    JobGraph,
    definition_from_row,
    graph_from_rows,
    job_from_row,
)
from orchestra.errors import ConfigurationError, JobStateError, UnknownJobError

__all__ = ["AsyncJobs", "JobHandle", "Jobs", "ManagedDatabase"]

T = TypeVar("T")

ORDERS: tuple[str, ...] = ("asc", "desc")
LIST_LIMIT_MAX = 10_000
#: The most jobs a dependency graph holds in each direction, by default and at most.
GRAPH_LIMIT_DEFAULT = 200
GRAPH_LIMIT_MAX = 10_000
#: Jobs per statement of retry_failed and delete_failed: row locks are held for
#: one batch only, and a huge backlog never becomes one huge transaction.
BULK_BATCH_SIZE = 500
#: How often a retry_failed batch is run again after a concurrent job took one
#: of its unique keys (each run sees more of the keys taken).
UNIQUE_CONFLICT_RETRIES = 3
#: How often a retry, cancel or delete that found the job in neither table is
#: run again: the job may have moved between the hot table and the history
#: (finished, cancelled, retried) while the statement waited for its row lock,
#: which that statement's snapshot cannot see; the next statement's can.
MOVED_JOB_RERUNS = 1
#: The partial unique index of unfinished jobs' (definition, unique_key).
UNIQUE_KEY_INDEX = "job_unique_key_uniq"
_BIGINT_MAX = 2**63 - 1

# The reason a JobStateError gives, by status, when no more specific one applies.
_STATE_REASONS = {
    "waiting": "it is waiting for its dependencies",
    "scheduled": "it is scheduled",
    "available": "it is available",
    "running": "it is running",
    "succeeded": "it already succeeded",
    "failed": "it already failed",
    "cancelled": "it was already cancelled",
}


# -- the handle ------------------------------------------------------------------


@attrs.frozen
class JobHandle:
    """A reference to a deferred job. Rebuild one from an id with ``JobHandle(id, config)``.

    Attributes:
        id: the job's id.
        deduplicated: True when ``defer`` found an unfinished job holding the
            same unique key and returned it instead of inserting a new one.
    """

    id: int
    config: ManagedDatabase = attrs.field(eq=False, repr=False)
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
        """The job's current status (``waiting``, ``scheduled``, ``available``, ``running`` ...)."""
        with self.config.connection() as conn:
            row = conn.execute(self.config.queries["job_status"], {"id": self.id}).fetchone()
        if row is None:
            raise UnknownJobError((self.id,))
        return str(row[0])

    def progress(self) -> Any:
        """What the job's running attempt last reported with ``ctx.set_progress``.

        A fraction from 0 to 1 or a dict, as the job gave it; None until it
        reports. The worker writes at most one value per job every 0.5 s,
        and the last one with the attempt's end, so this may lag the job by
        up to that much. A finished job keeps its last value.

        Raises:
            UnknownJobError: no such job.
        """
        with self.config.connection() as conn:
            row = conn.execute(self.config.queries["job_progress"], {"id": self.id}).fetchone()
        if row is None:
            raise UnknownJobError((self.id,))
        return _converter.load_readable(row[0])

    async def progress_async(self) -> Any:
        """Async twin of :meth:`progress`."""
        async with self.config.connection_async() as conn:
            cursor = await conn.execute(self.config.queries["job_progress"], {"id": self.id})
            row = await cursor.fetchone()
        if row is None:
            raise UnknownJobError((self.id,))
        return _converter.load_readable(row[0])

    def __int__(self) -> int:
        return self.id


class ManagedDatabase(Database[D]):
    """A Database with the management API: what :class:`orchestra.Config` is.

    Definitions and handles are typed with this class, so that
    ``definition.config.jobs`` and ``handle.config.jobs_async`` type-check.
    """

    @functools.cached_property
    def jobs(self) -> Jobs:
        """Find, list, retry, cancel and delete jobs; describe definitions."""
        return Jobs(self)

    @functools.cached_property
    def jobs_async(self) -> AsyncJobs:
        """Async twin of :attr:`jobs`, on this event loop's async pool."""
        return AsyncJobs(self)

    @functools.cached_property
    def channels(self) -> Channels:
        """Pause and resume channels."""
        return Channels(self)

    @functools.cached_property
    def channels_async(self) -> AsyncChannels:
        """Async twin of :attr:`channels`, on this event loop's async pool."""
        return AsyncChannels(self)

    @property
    def definitions(self) -> Definitions[D]:
        """The definitions registered in this process, by name (a snapshot), with
        :meth:`~orchestra._pause.Definitions.pause` and ``resume`` for stored ones."""
        return Definitions(self, super().definitions)

    @functools.cached_property
    def definitions_async(self) -> AsyncDefinitions:
        """Async twin of the pausing of :attr:`definitions`, on this event loop's async pool."""
        return AsyncDefinitions(self)


# -- argument checks (before any statement is sent) ----------------------------


def _check_job_id(job_id: object) -> int:
    value = job_id.id if isinstance(job_id, JobHandle) else job_id
    if not is_int(value) or not 1 <= value <= _BIGINT_MAX:
        raise ConfigurationError(
            "job_id", f"must be a positive job id or a JobHandle, got {job_id!r}"
        )
    return value


def _check_statuses(status: object) -> list[str]:
    if status is None:
        return list(STATUSES)
    if isinstance(status, str):
        values: list[object] = [status]
    elif isinstance(status, Iterable):
        values = list(status)
    else:
        raise ConfigurationError(
            "status", f"must be a status or an iterable of statuses, not {status!r}"
        )
    if not values:
        raise ConfigurationError("status", "must name at least one status (or be None for all)")
    unknown = [v for v in values if v not in STATUSES]
    if unknown:
        raise ConfigurationError(
            "status", f"unknown status {unknown[0]!r}: use one of {', '.join(STATUSES)}"
        )
    return [str(v) for v in dict.fromkeys(values)]


def _check_optional_name(value: object, argument: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(argument, f"must be a non-empty string or None, got {value!r}")
    return value


def _check_tag(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError("tag", f"must be a tag (a string) or None, got {value!r}")
    return check_tags([value], "tag")[0]


def _filters(status: object, definition: object, channel: object, tag: object) -> dict[str, Any]:
    return {
        "statuses": _check_statuses(status),
        "definition": _check_optional_name(definition, "definition"),
        "channel": _check_optional_name(channel, "channel"),
        "tag": _check_tag(tag),
    }


# -- outcomes to errors --------------------------------------------------------


def _check_outcome(action: str, job_id: int, row: Row) -> None:
    """Raise the error a retry, cancel or delete statement's result row calls for."""
    if row["done"]:
        return
    status: str | None = row["status"]
    if status is None:
        raise UnknownJobError((job_id,))
    if row.get("definition_missing"):
        raise JobStateError(
            job_id,
            status,
            action,
            f"its definition {row['definition']!r} is no longer stored; a worker or "
            "orchestrator that carries it stores it again",
        )
    if row.get("holder_id") is not None:
        raise JobStateError(
            job_id,
            status,
            action,
            f"job {row['holder_id']} of the same definition holds its unique_key "
            f"{row['unique_key']!r} and is not finished",
        )
    if row.get("blocker_id") is not None:
        raise JobStateError(
            job_id, status, action, f"job {row['blocker_id']} depends on it and is not finished"
        )
    raise JobStateError(job_id, status, action, _STATE_REASONS.get(status))


def _is_unique_key_conflict(exc: BaseException) -> bool:
    return (
        isinstance(exc, psycopg.errors.UniqueViolation)
        and exc.diag.constraint_name == UNIQUE_KEY_INDEX
    )


# -- operations, written once for both twins -----------------------------------


def _change(query: str, params: Mapping[str, Any]) -> Generator[Statement, Any, Row]:
    """Run a retry, cancel or delete statement; again if it found the job in neither table."""
    rows: list[Row] = yield Statement(query, params)
    for _ in range(MOVED_JOB_RERUNS):
        if rows[0]["status"] is not None:
            break
        rows = yield Statement(query, params)
    return rows[0]


def _get(job_id: object, with_attempts: bool) -> Op[Job]:
    checked = _check_job_id(job_id)
    rows: list[Row] = yield Statement(
        "manage_job_get", {"id": checked, "with_attempts": bool(with_attempts)}
    )
    if not rows:
        raise UnknownJobError((checked,))
    return job_from_row(rows[0])


def _graph(job_id: object, limit: object) -> Op[JobGraph]:
    checked = _check_job_id(job_id)
    most = check_int(limit, "limit", 1, GRAPH_LIMIT_MAX)
    rows: list[Row] = yield Statement("manage_job_graph", {"id": checked, "limit": most})
    if rows[0]["status"] is None:  # the job's own row comes first
        raise UnknownJobError((checked,))
    return graph_from_rows(checked, rows, most)


def _list(
    status: object,
    definition: object,
    channel: object,
    tag: object,
    limit: object,
    offset: object,
    order: object,
) -> Op[list[Job]]:
    params = _filters(status, definition, channel, tag)
    params["limit"] = check_int(limit, "limit", 1, LIST_LIMIT_MAX)
    params["offset"] = check_int(offset, "offset", 0, _BIGINT_MAX)
    if not isinstance(order, str) or order not in ORDERS:
        raise ConfigurationError("order", f"must be 'asc' or 'desc', got {order!r}")
    # Rows read from each table, in order, before the two are merged.
    params["window"] = min(params["limit"] + params["offset"], _BIGINT_MAX)
    rows: list[Row] = yield Statement(f"manage_job_list_{order}", params)
    return [job_from_row(row) for row in rows]


def _count(status: object, definition: object, channel: object, tag: object) -> Op[int]:
    rows: list[Row] = yield Statement(
        "manage_job_count", _filters(status, definition, channel, tag)
    )
    return int(rows[0]["n"])


def _recheck_waiting(config: Database, job_ids: list[int]) -> Op[None]:
    # After the retry's commit, as after a defer that came back waiting: a
    # dependency that succeeded while the retry ran did not see the job waiting.
    if job_ids:
        yield Statement(
            "manage_job_recheck_waiting",
            {"ids": job_ids, "notify_channel": config.notify_channel},
        )


def _retry(config: Database, job_id: object) -> Op[Job]:
    checked = _check_job_id(job_id)
    try:
        row = yield from _change(
            "manage_job_retry", {"id": checked, "notify_channel": config.notify_channel}
        )
    except psycopg.errors.UniqueViolation as exc:
        # Another retry or defer took the key between our check and our write;
        # the statement was rolled back as a whole.
        if not _is_unique_key_conflict(exc):
            raise
        job = yield from _get(checked, with_attempts=False)
        raise JobStateError(
            checked,
            job.status,
            "retry",
            f"another unfinished job of the same definition holds its unique_key "
            f"{job.unique_key!r}",
        ) from None
    _check_outcome("retry", checked, row)
    if row["new_status"] == "waiting":
        yield from _recheck_waiting(config, [checked])
    return (yield from _get(checked, with_attempts=False))


def _retry_failed(config: Database, definition: object) -> Op[int]:
    params = {
        "definition": _check_optional_name(definition, "definition"),
        "limit": BULK_BATCH_SIZE,
        "notify_channel": config.notify_channel,
    }
    total, after_id, conflicts = 0, 0, 0
    while True:
        try:
            rows: list[Row] = yield Statement(
                "manage_job_retry_failed", {**params, "after_id": after_id}
            )
        except psycopg.errors.UniqueViolation as exc:
            # A job that took one of the batch's keys committed after the
            # batch's snapshot; the batch was rolled back. Run it again: its
            # new snapshot sees that job, and leaves the colliding one failed.
            conflicts += 1
            if not _is_unique_key_conflict(exc) or conflicts > UNIQUE_CONFLICT_RETRIES:
                raise
            continue
        row = rows[0]
        total += int(row["retried"])
        yield from _recheck_waiting(config, [int(i) for i in row["waiting"]])
        if row["scanned"] < BULK_BATCH_SIZE:
            return total
        after_id = int(row["last_id"])


def _cancel(config: Database, job_id: object) -> Op[Job]:
    checked = _check_job_id(job_id)
    row = yield from _change(
        "manage_job_cancel",
        {
            "id": checked,
            "finished_channel": config.finished_channel,
            "notify_channel": config.notify_channel,
        },
    )
    _check_outcome("cancel", checked, row)
    return (yield from _get(checked, with_attempts=False))


def _delete(job_id: object) -> Op[None]:
    checked = _check_job_id(job_id)
    row = yield from _change("manage_job_delete", {"id": checked})
    _check_outcome("delete", checked, row)


def _delete_failed(definition: object) -> Op[int]:
    params = {
        "definition": _check_optional_name(definition, "definition"),
        "limit": BULK_BATCH_SIZE,
    }
    total, after_id = 0, 0
    while True:
        rows: list[Row] = yield Statement(
            "manage_job_delete_failed", {**params, "after_id": after_id}
        )
        row = rows[0]
        total += int(row["deleted"])
        if row["scanned"] < BULK_BATCH_SIZE:
            return total
        after_id = int(row["last_id"])


def _definitions() -> Op[list[DefinitionInfo]]:
    rows: list[Row] = yield Statement("manage_definition_list", {})
    return [definition_from_row(row) for row in rows]


# -- the managers ----------------------------------------------------------------


class Jobs:
    """Inspect and manage the jobs of one Config: ``config.jobs``.

    Every method borrows a pooled connection of its own and commits before it
    returns. Arguments are checked before anything is sent: a bad one raises
    :class:`~orchestra.errors.ConfigurationError` naming it, and writes nothing.
    """

    def __init__(self, config: Database) -> None:
        self._config = config

    def __repr__(self) -> str:
        return f"Jobs(schema={self._config.schema!r})"

    def _run(self, op: Op[T]) -> T:
        started, step = _ops.start(op)  # the argument checks run here, before connecting
        if not started:
            return step  # type: ignore[no-any-return]
        with self._config.connection() as conn:
            return _ops.run(conn, self._config.queries, op, step)

    def get(self, job_id: int | JobHandle, *, with_attempts: bool = True) -> Job:
        """The job with this id, unfinished (the queue) or finished (the history).

        With ``with_attempts`` (default) its attempt log comes too, oldest
        first, with errors and tracebacks. Raises UnknownJobError for an id
        that is in neither table (never deferred, deleted, or past the
        history's retention).
        """
        return self._run(_get(job_id, with_attempts))

    def graph(self, job_id: int | JobHandle, *, limit: int = GRAPH_LIMIT_DEFAULT) -> JobGraph:
        """The dependency graph around a job: what it depends on and what depends on it.

        The jobs it depends on, theirs in turn, and the jobs that depend on it,
        down to the last, each with its definition and status, and the edges
        between them: a workflow (a chord, a chain) seen from any of its jobs.
        At most ``limit`` jobs (1 to 10 000) in each direction, the nearest
        first; :attr:`JobGraph.truncated` says when more were left out. A
        finished workflow is read for as long as the history keeps it.
        Raises UnknownJobError for an id in neither table.
        """
        return self._run(_graph(job_id, limit))

    def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        definition: str | None = None,
        channel: str | None = None,
        tag: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "asc",
    ) -> builtins.list[Job]:
        """A page of jobs, by id (``order`` ``asc`` or ``desc``), without their attempts.

        ``status`` is one status or several (None: all); ``tag`` keeps the
        jobs deferred with that tag among theirs. There is no hidden time
        window: every job is listed, however old, finished ones for as long
        as the history keeps them. ``limit`` is 1 to 10 000, ``offset`` >= 0.
        """
        return self._run(_list(status, definition, channel, tag, limit, offset, order))

    def count(
        self,
        *,
        status: str | Iterable[str] | None = None,
        definition: str | None = None,
        channel: str | None = None,
        tag: str | None = None,
    ) -> int:
        """How many jobs :meth:`list` would find with these filters, without a limit."""
        return self._run(_count(status, definition, channel, tag))

    def retry(self, job_id: int | JobHandle) -> Job:
        """Run a job again; returns it as it is right after.

        A finalized job (succeeded, failed or cancelled) leaves the history
        for the queue with its id and attempt log, gets a fresh attempt budget
        (attempt 0, same ``max_attempts``), loses its result, and becomes
        ``available`` now, or ``waiting`` if one of its dependencies has not
        succeeded (retry those first: a failed one would fail it again). An
        ``available`` job that waits for its backoff is made due now. Workers
        of its channel are woken.

        Raises JobStateError for a running or waiting job, when another
        unfinished job of the definition holds its ``unique_key``, and when its
        definition is no longer stored; UnknownJobError for an unknown id.
        Jobs that failed because this one failed (``unmet_dependencies``) are
        not retried with it. A job cancelled while running may still have that
        attempt running.
        """
        return self._run(_retry(self._config, job_id))

    def retry_failed(self, *, definition: str | None = None) -> int:
        """Retry every failed job (of one definition, or all) like :meth:`retry`; returns how many.

        Works in batches of 500, one statement each. A failed job whose
        ``unique_key`` is held by an unfinished job, or by a newer failed job
        (retried instead), stays failed. Failed jobs created while this runs
        may or may not be included.
        """
        return self._run(_retry_failed(self._config, definition))

    def cancel(self, job_id: int | JobHandle) -> Job:
        """Cancel a waiting, available or running job; returns it as it is right after.

        The job is finalized as ``cancelled`` (``last_error`` says so unless it
        already had an error), moves to the history, and result waiters are
        told at once. Dependents are failed (``unmet_dependencies``) by the
        orchestrator.

        A running job is stopped: its worker is notified at once (or finds
        out at its next heartbeat, without LISTEN) and cancels an ``async
        def`` function's task, terminates the child process of a
        ``processes=N`` worker, or turns a ``def`` function's
        ``ctx.should_stop`` true (a thread cannot be killed: the function
        stops when it returns). The attempt is logged as ``cancelled``, the
        job is not retried, and whatever the function still returns is
        discarded (a finish written before the worker knew is refused).
        From the cancel on, its resource key and its definition's
        ``max_concurrency`` no longer count it.

        Raises JobStateError for a finalized job, UnknownJobError for an
        unknown id; nothing is changed then.
        """
        return self._run(_cancel(self._config, job_id))

    def delete(self, job_id: int | JobHandle) -> None:
        """Delete a job, unfinished or finished, with its attempt log and dependency edges.

        Raises JobStateError if it is running (cancel it first) or if an
        unfinished job depends on it; UnknownJobError for an unknown id.
        """
        self._run(_delete(job_id))

    def delete_failed(self, *, definition: str | None = None) -> int:
        """Delete every failed job (of one definition, or all); returns how many.

        Works in batches of 500, one statement each. A failed job that an
        unfinished job depends on is kept.
        """
        return self._run(_delete_failed(definition))

    def definitions(self) -> builtins.list[DefinitionInfo]:
        """Every definition stored in the database, by name, with its job counts per status."""
        return self._run(_definitions())


class AsyncJobs:
    """Async twin of :class:`Jobs`: ``config.jobs_async``; same methods, as coroutines.

    It uses the Config's async pool of the running event loop.
    """

    def __init__(self, config: Database) -> None:
        self._config = config

    def __repr__(self) -> str:
        return f"AsyncJobs(schema={self._config.schema!r})"

    async def _run(self, op: Op[T]) -> T:
        started, step = _ops.start(op)  # the argument checks run here, before connecting
        if not started:
            return step  # type: ignore[no-any-return]
        async with self._config.connection_async() as conn:
            return await _ops.run_async(conn, self._config.queries, op, step)

    async def get(self, job_id: int | JobHandle, *, with_attempts: bool = True) -> Job:
        """Async twin of :meth:`Jobs.get`."""
        return await self._run(_get(job_id, with_attempts))

    async def graph(self, job_id: int | JobHandle, *, limit: int = GRAPH_LIMIT_DEFAULT) -> JobGraph:
        """Async twin of :meth:`Jobs.graph`."""
        return await self._run(_graph(job_id, limit))

    async def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        definition: str | None = None,
        channel: str | None = None,
        tag: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "asc",
    ) -> builtins.list[Job]:
        """Async twin of :meth:`Jobs.list`."""
        return await self._run(_list(status, definition, channel, tag, limit, offset, order))

    async def count(
        self,
        *,
        status: str | Iterable[str] | None = None,
        definition: str | None = None,
        channel: str | None = None,
        tag: str | None = None,
    ) -> int:
        """Async twin of :meth:`Jobs.count`."""
        return await self._run(_count(status, definition, channel, tag))

    async def retry(self, job_id: int | JobHandle) -> Job:
        """Async twin of :meth:`Jobs.retry`."""
        return await self._run(_retry(self._config, job_id))

    async def retry_failed(self, *, definition: str | None = None) -> int:
        """Async twin of :meth:`Jobs.retry_failed`."""
        return await self._run(_retry_failed(self._config, definition))

    async def cancel(self, job_id: int | JobHandle) -> Job:
        """Async twin of :meth:`Jobs.cancel`."""
        return await self._run(_cancel(self._config, job_id))

    async def delete(self, job_id: int | JobHandle) -> None:
        """Async twin of :meth:`Jobs.delete`."""
        await self._run(_delete(job_id))

    async def delete_failed(self, *, definition: str | None = None) -> int:
        """Async twin of :meth:`Jobs.delete_failed`."""
        return await self._run(_delete_failed(definition))

    async def definitions(self) -> builtins.list[DefinitionInfo]:
        """Async twin of :meth:`Jobs.definitions`."""
        return await self._run(_definitions())
