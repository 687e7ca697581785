"""What the queue stores, as values: jobs, their attempts, definitions' rows.

Read by the management API (:mod:`orchestra._jobs`), the worker's lifecycle
callbacks and the dashboard; built from rows of ``manage.sql``'s queries, one
function per row type.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import attrs

from orchestra import _converter

#: Every job status, in lifecycle order (the order of the ``job_status`` enum).
STATUSES: tuple[str, ...] = ("waiting", "available", "running", "succeeded", "failed", "cancelled")
#: The final statuses: only an explicit retry takes a job out of them.
FINALIZED_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")


# -- values -------------------------------------------------------------------


@attrs.frozen
class Attempt:
    """One ended attempt of a job, from its attempt log.

    Attributes:
        attempt: the attempt's number, from 1. A retry gives the job a fresh
            budget, so numbers start again at 1 after it; the log keeps every
            attempt, in the order they ended.
        worker_id: the id of the worker that ran it (None when not recorded).
        worker_name: that worker's name, when recorded.
        started_at: when it was claimed.
        finished_at: when it ended (or was found lost, timed out or cancelled).
        outcome: ``succeeded``, ``failed``, ``lost``, ``interrupted`` or ``timed_out``.
        error: the error message, if it did not succeed.
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
        status: ``waiting``, ``available``, ``running``, ``succeeded``, ``failed``
            or ``cancelled``.
        priority: higher runs first.
        payload: the payload, decoded from JSON (not structured into the
            definition's payload type: the definition may not be loaded here).
        result: the job function's return value, decoded from JSON, once it succeeded.
        attempt: attempts used (claims so far), from 0.
        max_attempts: its attempt budget.
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

    @property
    def is_finalized(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.status in FINALIZED_STATUSES


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
