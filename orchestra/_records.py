"""What the queue stores, as values: jobs, their attempts, definitions' rows.

Read by the management API (:mod:`orchestra._jobs`), the worker's lifecycle
callbacks and the dashboard; built from rows of ``manage.sql``'s queries, one
function per row type.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from orchestra import _converter

#: Every job status, in lifecycle order (the order of the ``job_status`` enum).
STATUSES: tuple[str, ...] = (
    "waiting",
    "scheduled",
    "available",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
#: The final statuses: only an explicit retry takes a job out of them.
FINALIZED_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")


# -- values -------------------------------------------------------------------


@attrs.frozen
class Attempt:
    """One ended attempt of a job, from its attempt log.

    Attributes:
        attempt: the attempt's number, from 1. A retry gives the job a fresh
            budget and numbers go on after it (#1, #2, then #3 ...); a snooze spends no
            attempt, so the run after it has the same number; the log keeps
            every attempt, in the order they ended.
        worker_id: the id of the worker that ran it (None when not recorded).
        worker_name: that worker's name, when recorded.
        started_at: when it was claimed.
        finished_at: when it ended (or was found lost, timed out or cancelled).
        outcome: ``succeeded``, ``failed``, ``lost``, ``interrupted``,
            ``timed_out``, ``snoozed`` (the function snoozed: no attempt spent)
            or ``cancelled`` (the job was cancelled while it ran).
        error: the error message, if it did not succeed (for a snooze: for
            how long).
        traceback: the Python traceback of a failure, when there was one.
    """

    attempt: int
    worker_id: int | None
    worker_name: str | None
    started_at: dt.datetime
    finished_at: dt.datetime
    outcome: str
    error: str | None
    traceback: str | None


@attrs.frozen
class Job:
    """A job as stored, read by :meth:`Jobs.get` or :meth:`Jobs.list`.

    Attributes:
        id: the job's id.
        definition: the name of its definition.
        channel: the channel whose workers run it.
        status: ``waiting``, ``scheduled``, ``available``, ``running``,
            ``succeeded``, ``failed`` or ``cancelled``. ``scheduled`` is an
            available job whose :attr:`run_at` is still ahead (delayed, or
            waiting for a retry's backoff); ``available`` means due now.
        priority: higher runs first.
        payload: the payload, decoded from JSON (not structured into the
            definition's payload type: the definition may not be loaded here).
        result: the job function's return value, decoded from JSON, once it succeeded.
        attempt: attempts used (claims so far), from 0; a retry keeps counting.
        max_attempts: the attempt number it may reach: the definition's
            ``num_attempts``, raised by as many again at each retry.
        run_at: when it is (or was) due.
        created_at: when it was deferred.
        started_at: when its last attempt started.
        finalized_at: when it reached a final status.
        last_error: the error of its last failed attempt (or why it was finalized).
        unique_key: its deduplication key.
        resource_key: its resource key (at most one running job per key).
        locked_by: the id of the worker running it, while it runs.
        depends_on: the ids of the jobs it waits (or waited) for; kept after
            the job finished, for as long as the history keeps it.
        attempts: its attempt log, oldest first; None when not asked for.
        archived: True when read from ``job_history``, where every finished job
            is kept (the former archive); False for an unfinished job. Finished
            jobs are no longer read-only: they can be retried and deleted.
        tags: the tags it was deferred with (``defer(tags=...)``), in order.
        meta: the metadata it was deferred with (``defer(meta=...)``), a dict.
        progress: what its running attempt last reported
            (``ctx.set_progress``): a fraction from 0 to 1 or a dict; None
            until a job reports. Kept when the job finishes or is retried.
    """

    id: int
    definition: str
    channel: str
    status: str
    priority: int
    payload: Any
    result: Any
    attempt: int
    max_attempts: int
    run_at: dt.datetime
    created_at: dt.datetime
    started_at: dt.datetime | None
    finalized_at: dt.datetime | None
    last_error: str | None
    unique_key: str | None
    resource_key: str | None
    locked_by: int | None
    depends_on: tuple[int, ...]
    attempts: tuple[Attempt, ...] | None
    archived: bool
    tags: tuple[str, ...] = ()
    meta: Mapping[str, Any] = attrs.field(factory=dict)
    progress: Any = None

    @property
    def is_finalized(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.status in FINALIZED_STATUSES

    @property
    def progress_fraction(self) -> float | None:
        """How far :attr:`progress` says the job got, from 0 to 1; None when it does not say."""
        return progress_fraction(self.progress)


def _number(value: object) -> float | None:
    """``value`` as a float when it is an int or a float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def progress_fraction(progress: Any) -> float | None:
    """How far a progress value says its job got, from 0 to 1, or None.

    The value itself when it is a number; ``done / total`` for a dict with a
    number under both keys (and a positive total); None for anything else.
    """
    if isinstance(progress, bool):
        return None
    if isinstance(progress, int | float):
        share = float(progress)
    elif isinstance(progress, Mapping):
        done, total = _number(progress.get("done")), _number(progress.get("total"))
        if done is None or total is None or total <= 0:
            return None
        share = done / total
    else:
        return None
    return min(1.0, max(0.0, share)) if share == share else None  # NaN says nothing


@attrs.frozen
class DefinitionInfo:
    """A definition as stored in ``job_definition``, with its job counts.

    Attributes mirror :class:`~orchestra.JobDefinition`'s settings (``backoff``
    is its kind); ``last_repeated_at``, ``next_tick_at``, ``last_released_at``
    and ``last_heartbeat_at`` are kept by the daemons; ``counts`` maps every
    status to how many of the definition's jobs have it (finished jobs count
    for as long as the history keeps them).
    """

    name: str
    channel: str
    num_attempts: int
    backoff: str
    priority: int
    repeat_interval_ms: int | None
    cron: str | None
    release_interval_ms: int
    max_concurrency: int | None
    lock_interval_ms: int
    timeout_interval_ms: int
    last_repeated_at: dt.datetime | None
    next_tick_at: dt.datetime | None
    last_released_at: dt.datetime | None
    last_heartbeat_at: dt.datetime
    paused: bool
    counts: Mapping[str, int]


@attrs.frozen
class PausedChannel:
    """A paused channel: no worker claims its jobs until it is resumed.

    Attributes:
        channel: the channel's name.
        paused_at: when it was paused.
        paused_by: the database role that paused it.
    """

    channel: str
    paused_at: dt.datetime
    paused_by: str | None


#: Where a job of a :class:`JobGraph` stands: the job itself, the jobs it
#: depends on (directly or not), the jobs that depend on it.
GRAPH_SIDES: tuple[str, ...] = ("self", "upstream", "downstream")


@attrs.frozen
class GraphNode:
    """One job of a :class:`JobGraph`.

    Attributes:
        id: the job's id.
        definition: the name of its definition; None when the history no longer
            keeps the job (its edges outlive it until its dependent's history
            partition is dropped).
        status: its status; None when the history no longer keeps it.
        side: ``self`` (the job the graph is about), ``upstream`` (the job
            depends on it, directly or through others) or ``downstream`` (it
            depends on the job, directly or through others).
        depth: its layer: 0 for the job, -1 for the jobs it depends on
            directly, -2 for theirs ..., 1 for its direct dependents, 2 for
            theirs ... Along the longest path within the graph, so that a job
            always stands right of every job of the graph it depends on.
        depends_on: the ids of the jobs of the graph it depends on, ascending
            (its edges; those to jobs the graph does not hold are left out).
    """

    id: int
    definition: str | None
    status: str | None
    side: str
    depth: int
    depends_on: tuple[int, ...]


@attrs.frozen
class JobGraph:
    """The dependency graph around one job, read by :meth:`Jobs.graph`.

    Each direction holds at most ``limit`` jobs, the nearest first (by the
    number of dependency steps from the job): a chord's callback with
    10,000 members shows ``limit`` of them and says it was cut.

    Attributes:
        job_id: the job the graph is about.
        nodes: the job, then the jobs upstream, then those downstream, each by id.
        limit: the most jobs read in each direction.
        upstream_truncated: more jobs upstream than ``limit``: some are left out.
        downstream_truncated: likewise downstream.
    """

    job_id: int
    nodes: tuple[GraphNode, ...]
    limit: int
    upstream_truncated: bool
    downstream_truncated: bool

    @property
    def truncated(self) -> bool:
        """True when either direction was cut at ``limit`` jobs."""
        return self.upstream_truncated or self.downstream_truncated

    @property
    def upstream(self) -> tuple[GraphNode, ...]:
        """The jobs the job depends on, directly or not, by id."""
        return tuple(node for node in self.nodes if node.side == "upstream")

    @property
    def downstream(self) -> tuple[GraphNode, ...]:
        """The jobs that depend on the job, directly or not, by id."""
        return tuple(node for node in self.nodes if node.side == "downstream")

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """Every edge of the graph as (dependent id, dependency id)."""
        return tuple((node.id, dep) for node in self.nodes for dep in node.depends_on)

    def node(self, job_id: int) -> GraphNode | None:
        """The job of this id in the graph, or None."""
        return next((node for node in self.nodes if node.id == job_id), None)

    def dependents(self, job_id: int) -> tuple[GraphNode, ...]:
        """The jobs of the graph that depend directly on ``job_id``, by id."""
        return tuple(node for node in self.nodes if job_id in node.depends_on)


# -- rows to values (one function per row type) --------------------------------


def _timestamp(value: str | None) -> dt.datetime | None:
    # PostgreSQL writes timestamptz into JSON as ISO 8601 with an offset.
    return None if value is None else dt.datetime.fromisoformat(value)


def attempt_from_json(item: Mapping[str, Any]) -> Attempt:
    """An :class:`Attempt` from one element of an attempt log in JSON.

    That is the shape of ``job_history.attempts`` and of the live log as
    ``manage_job_get`` aggregates it: ``to_jsonb`` of a ``job_attempt`` row.
    """
    started_at = _timestamp(item["started_at"])
    finished_at = _timestamp(item["finished_at"])
    assert started_at is not None and finished_at is not None  # NOT NULL columns
    return Attempt(
        attempt=int(item["attempt"]),
        worker_id=item.get("worker_id"),
        worker_name=item.get("worker_name"),
        started_at=started_at,
        finished_at=finished_at,
        outcome=str(item["outcome"]),
        error=item.get("error"),
        traceback=item.get("traceback"),
    )


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A :class:`Job` from a row of ``manage_job_get`` or ``manage_job_list_*``."""
    attempts = row["attempts"]
    return Job(
        id=row["id"],
        definition=row["definition"],
        channel=row["channel"],
        status=row["status"],
        priority=row["priority"],
        payload=_converter.load_readable(row["payload"]),
        result=_converter.load_readable(row["result"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        run_at=row["run_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finalized_at=row["finalized_at"],
        last_error=row["last_error"],
        unique_key=row["unique_key"],
        resource_key=row["resource_key"],
        locked_by=row["locked_by"],
        depends_on=tuple(row["depends_on"] or ()),
        attempts=None if attempts is None else tuple(attempt_from_json(a) for a in attempts),
        archived=row["in_history"],
        tags=tuple(row["tags"] or ()),
        meta=_converter.load_readable(row["meta"]) or {},
        progress=_converter.load_readable(row["progress"]),
    )


def definition_from_row(row: Mapping[str, Any]) -> DefinitionInfo:
    """A :class:`DefinitionInfo` from a row of ``manage_definition_list``."""
    counts = row["counts"] or {}
    return DefinitionInfo(
        name=row["name"],
        channel=row["channel"],
        num_attempts=row["num_attempts"],
        backoff=row["backoff"],
        priority=row["priority"],
        repeat_interval_ms=row["repeat_interval_ms"],
        cron=row["cron"],
        release_interval_ms=row["release_interval_ms"],
        max_concurrency=row["max_concurrency"],
        lock_interval_ms=row["lock_interval_ms"],
        timeout_interval_ms=row["timeout_interval_ms"],
        last_repeated_at=row["last_repeated_at"],
        next_tick_at=row["next_tick_at"],
        last_released_at=row["last_released_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
        paused=row["paused"],
        # Every status is present, zeros included, so callers can index freely.
        counts={status: int(counts.get(status, 0)) for status in STATUSES},
    )


def graph_from_rows(job_id: int, rows: Sequence[Mapping[str, Any]], limit: int) -> JobGraph:
    """A :class:`JobGraph` from the rows of ``manage_job_graph`` (the job's row first).

    Depths follow the longest path within the graph. A dependency always has
    a smaller id than its dependents (it existed when they were deferred), so
    taking the jobs upstream from the highest id down, and those downstream
    from the lowest up, sees every job's neighbours on the job's side before
    the job.
    """
    sides = {int(row["id"]): str(row["side"]) for row in rows}
    needs = {int(row["id"]): tuple(int(i) for i in row["depends_on"] or ()) for row in rows}
    depth = {job_id: 0}
    for node in sorted((i for i, s in sides.items() if s == "downstream")):
        near = [depth[p] for p in needs[node] if p in depth and sides[p] != "upstream"]
        depth[node] = max(near, default=0) + 1
    dependents: dict[int, list[int]] = {}
    for node, wanted in needs.items():
        if sides[node] != "downstream":
            for dependency in wanted:
                dependents.setdefault(dependency, []).append(node)
    for node in sorted((i for i, s in sides.items() if s == "upstream"), reverse=True):
        near = [depth[d] for d in dependents.get(node, ()) if d in depth]
        depth[node] = min(near, default=0) - 1
    first = rows[0] if rows else {}
    return JobGraph(
        job_id=job_id,
        nodes=tuple(
            GraphNode(
                id=int(row["id"]),
                definition=row["definition"],
                status=row["status"],
                side=str(row["side"]),
                depth=depth[int(row["id"])],
                depends_on=needs[int(row["id"])],
            )
            for row in rows
        ),
        limit=limit,
        upstream_truncated=bool(first.get("upstream_cut")),
        downstream_truncated=bool(first.get("downstream_cut")),
    )
