"""Lane statements: a lane's finishes and its next claim, written in one transaction.

A lane owns part of the worker's concurrency (all of it below 100 slots; the
bookkeeping is :mod:`._slots`). The finishes of its jobs are collected while
its last statement runs, then written together with the claim of as many jobs
as the write frees, in one transaction: record the attempts (fenced by id,
attempt and lock token), release dependents, claim. So

* a batch of jobs costs one round trip and one commit, not one each for the
  acknowledgement and the next claim;
* the worker never holds more claims than its concurrency: the finished jobs
  give their slots to the claimed ones at the commit, not before;
* with two lanes, while one lane's statement runs in the database, the other
  lane's jobs run in Python, which keeps both busy.

Every row is fenced in SQL, so a batch retried after a connection error can
never overwrite a newer state: at worst it is refused. The
:class:`~._writer.LaneWriter` runs these statements until they committed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from orchestra._definition import JobDefinition
from orchestra._sql import Queries
from orchestra._worker._attempts import Claimed, Finish


def limited_definitions(
    definitions: Iterable[JobDefinition[Any]], channels: Iterable[str]
) -> tuple[list[str], float]:
    """The rate- or concurrency-limited definitions of the channels, and their
    shortest release interval in seconds (0.0 without one): what the guarded
    claim locks."""
    served = set(channels)
    limited = [
        d
        for d in definitions
        if d.channel in served and (d.release_interval_ms > 0 or d.max_concurrency is not None)
    ]
    intervals = [d.release_interval_ms for d in limited if d.release_interval_ms > 0]
    return [d.name for d in limited], (min(intervals) / 1000 if intervals else 0.0)


def finish_params(
    batch: list[Finish],
    *,
    worker_id: int,
    worker_name: str,
    notify_channel: str,
    finished_channel: str,
) -> dict[str, Any]:
    """The parameters of ``job_finish_many`` for ``batch``."""
    return {
        "ids": [f.job_id for f in batch],
        "attempts": [f.attempt for f in batch],
        "tokens": [f.token for f in batch],
        "outcomes": [f.outcome for f in batch],
        "results": [f.result for f in batch],
        "errors": [f.error for f in batch],
        "tracebacks": [f.traceback for f in batch],
        "retry_delays_ms": [f.retry_delay_ms for f in batch],
        "started_ats": [f.started_at for f in batch],
        "progresses": [f.progress for f in batch],
        "worker_id": worker_id,
        "worker_name": worker_name,
        "notify_channel": notify_channel,
        "finished_channel": finished_channel,
    }


Statement = tuple[str, dict[str, Any] | None]


def lane_statements(
    batch: list[Finish],
    claim: int,
    *,
    channels: Sequence[str],
    worker_id: int,
    worker_name: str,
    notify_channel: str,
    finished_channel: str,
    claim_id: str | None,
) -> list[Statement]:
    """The statements of one lane write, by query name, run in this order.

    With a batch they run in one transaction: ``job_finish_many`` (fenced),
    ``job_release_dependents`` for the successes (a statement of its own,
    whose snapshot follows the finish's row locks: decision 0007), then
    ``job_claim``. Without a batch, the claim is the only statement. ``claim_id`` (a new
    UUID per statement) seeds the claimed jobs' lock tokens, so that
    :func:`find_out` can tell what a statement whose reply was lost did.
    """
    if claim and not claim_id:
        # The tokens of its jobs derive from it: reusing one would give a job
        # the same token in two claims, and fence nothing.
        raise ValueError("a claim needs a claim_id of its own (new_claim_id())")
    statements: list[Statement] = []
    if batch:
        statements.append(
            (
                "job_finish_many",
                finish_params(
                    batch,
                    worker_id=worker_id,
                    worker_name=worker_name,
                    notify_channel=notify_channel,
                    finished_channel=finished_channel,
                ),
            )
        )
        succeeded = [f.job_id for f in batch if f.outcome == "succeeded"]
        if succeeded:
            statements.append(
                ("job_release_dependents", {"ids": succeeded, "notify_channel": notify_channel})
            )
    if claim:
        statements.append(
            (
                "job_claim",
                {
                    "channels": list(channels),
                    "now": None,
                    "limit": claim,
                    "worker_id": worker_id,
                    "claim_id": claim_id,
                },
            )
        )
    return statements


def apply_committed(batch: list[Finish], rows: list[tuple[Any, ...]]) -> None:
    """Fill in what ``job_finish_many`` returned; a finish it did not return was fenced.

    A cancelled attempt's finish is not written (:attr:`Finish.written`): the
    cancel that stopped it recorded it, and left its job ``cancelled``.
    """
    committed = {row[0]: row for row in rows}
    for finish in batch:
        if not finish.written:
            finish.committed_status = "cancelled"
            continue
        row = committed.get(finish.job_id)
        if row is not None:
            finish.committed_status = row[1]
            finish.committed_run_at = row[2]


async def execute(
    pool: AsyncConnectionPool[Any], queries: Queries, statements: list[Statement]
) -> tuple[list[tuple[Any, ...]], list[Claimed]]:
    """Run a lane's statements (:func:`lane_statements`) in one round trip.

    Returns the rows ``job_finish_many`` returned and the jobs claimed. Several
    statements run in one transaction, its ``BEGIN`` and ``COMMIT`` sent as
    statements of the pipeline: ``conn.transaction()`` would wait for the
    ``COMMIT`` in a second round trip (1 ms here).
    """
    cursors: dict[str, psycopg.AsyncCursor[Any]] = {}
    async with pool.connection() as conn:
        if len(statements) == 1:
            name, params = statements[0]
            cursors[name] = await conn.execute(queries[name], params)
        else:
            try:
                async with conn.pipeline():
                    await conn.execute(queries["transaction_begin"])
                    for name, params in statements:
                        cursors[name] = await conn.execute(queries[name], params)
                    await conn.execute(queries["transaction_commit"])
            except BaseException:
                # A refused statement left the transaction aborted: end it
                # before the connection goes back to the pool.
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise
        finished = cursors.get("job_finish_many")
        claimed = cursors.get("job_claim")
        rows = [] if finished is None else await finished.fetchall()
        jobs = [] if claimed is None else [Claimed(*row) for row in await claimed.fetchall()]
    return rows, jobs


def new_claim_id() -> str:
    """A fresh seed for the lock tokens of one claim statement."""
    return str(uuid.uuid4())


async def find_out(
    pool: AsyncConnectionPool[Any],
    queries: Queries,
    batch: list[Finish],
    *,
    claim_id: str | None,
    worker_id: int,
) -> tuple[list[tuple[Any, ...]], list[Claimed]]:
    """What a lane statement whose reply was lost did (the connection broke).

    An error after the statement was sent does not say whether its commit
    happened. Returns the finishes of ``batch`` that are recorded (their
    attempt row carries their lock token), as rows like those of
    ``job_finish_many`` (:func:`apply_committed`), and the jobs the claim seeded
    with ``claim_id`` took and still hold. Both are empty when nothing of it
    committed. Raises as the pool does when the database is still unreachable.
    """
    recorded: dict[int, dt.datetime] = {}
    recovered: list[Claimed] = []
    async with pool.connection() as conn:
        if batch:
            cursor = await conn.execute(
                queries["job_finish_recorded"],
                {
                    "ids": [f.job_id for f in batch],
                    "attempts": [f.attempt for f in batch],
                    "tokens": [f.token for f in batch],
                    "outcomes": [f.outcome for f in batch],
                },
            )
            recorded = {int(row[0]): row[1] for row in await cursor.fetchall()}
        if claim_id is not None:
            cursor = await conn.execute(
                queries["job_claim_recover"], {"claim_id": claim_id, "worker_id": worker_id}
            )
            recovered = [Claimed(*row) for row in await cursor.fetchall()]
    return [recorded_row(f, recorded[f.job_id]) for f in batch if f.job_id in recorded], recovered


def recorded_row(finish: Finish, at: dt.datetime) -> tuple[Any, ...]:
    """The ``(id, status, run_at)`` that ``job_finish_many`` returned for ``finish``,
    rebuilt from the time it was recorded (``at``; a release: its run_at)."""
    if finish.outcome == "succeeded":
        return (finish.job_id, "succeeded", None)
    if finish.outcome == "released":
        return (finish.job_id, "available", at)
    if finish.outcome == "snoozed" or finish.attempt < finish.max_attempts:
        return (
            finish.job_id,
            "available",
            at + dt.timedelta(milliseconds=finish.retry_delay_ms),
        )
    return (finish.job_id, "failed", None)
