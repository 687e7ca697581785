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
never overwrite a newer state: at worst it is refused. :class:`LaneWriter`
runs a lane's statement until it committed, and after an error that leaves
the outcome unknown finds out what committed before writing anything again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import psycopg
from psycopg_pool import AsyncConnectionPool

from orchestra._definition import JobDefinition
from orchestra._sql import Queries
from orchestra._worker._attempts import Claimed, Finish
from orchestra._worker._heartbeat import WorkerRow
from orchestra._worker._report import WorkerStats
from orchestra._worker._retry import DatabaseErrors

logger = logging.getLogger("orchestra.worker")

#: Claims refused in a row by the running-resource-key index before the
#: worker backs off as for a database error (each retry normally succeeds).
KEY_CONFLICT_RETRIES = 3


def limited_definitions(
    definitions: Iterable[JobDefinition[Any]], channel: str
) -> tuple[list[str], float]:
    """The channel's rate- or concurrency-limited definitions, and their shortest
    release interval in seconds (0.0 without one): what the guarded claim locks."""
    limited = [
        d
        for d in definitions
        if d.channel == channel and (d.release_interval_ms > 0 or d.max_concurrency is not None)
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
    channel: str,
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
                    "channel": channel,
                    "now": None,
                    "limit": claim,
                    "worker_id": worker_id,
                    "claim_id": claim_id,
                },
            )
        )
    return statements


def apply_committed(batch: list[Finish], rows: list[tuple[Any, ...]]) -> None:
    """Fill in what ``job_finish_many`` returned; a finish it did not return was fenced."""
    committed = {row[0]: row for row in rows}
    for finish in batch:
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
    if finish.attempt < finish.max_attempts:
        return (
            finish.job_id,
            "available",
            at + dt.timedelta(milliseconds=finish.retry_delay_ms),
        )
    return (finish.job_id, "failed", None)


@attrs.frozen
class Written:
    """What a lane statement committed.

    Attributes:
        rows: what ``job_finish_many`` returned for the batch (:func:`apply_committed`).
        claim: how many jobs the claim asked for in the end (0: it was dropped
            after an error, or because the worker stops).
        claimed: the jobs its claim took.
        look_again: an error hid whether more jobs wait: claim with the next statement.
    """

    rows: list[tuple[Any, ...]]
    claim: int
    claimed: list[Claimed]
    look_again: bool = False


@attrs.frozen
class LimitedClaim:
    """The jobs the guarded claim took, and how soon a rate-limited backlog releases more."""

    claimed: list[Claimed]
    release_wait_s: float | None = None


class LaneWriter:
    """Runs lane statements against the database until they commit.

    Args:
        pool: the worker's connection pool.
        queries: the rendered queries.
        row: this worker's row (its id seeds the claims and fences finishes).
        channel, worker_name, notify_channel, finished_channel: the statements' parameters.
        errors: reports failures and paces retries.
        claims_allowed: False once the worker stops (it claims nothing more).
        limited: the channel's rate- or concurrency-limited definitions and
            their shortest release interval in seconds.
        stats: counts the claim statements.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        queries: Queries,
        row: WorkerRow,
        *,
        channel: str,
        worker_name: str,
        notify_channel: str,
        finished_channel: str,
        errors: DatabaseErrors,
        claims_allowed: Callable[[], bool],
        limited: tuple[list[str], float],
        stats: WorkerStats,
    ) -> None:
        self._pool = pool
        self._queries = queries
        self._row = row
        self._channel = channel
        self._worker_name = worker_name
        self._notify_channel = notify_channel
        self._finished_channel = finished_channel
        self._errors = errors
        self._claims_allowed = claims_allowed
        self._limited = limited
        self._stats = stats
        self._key_conflicts = 0

    @property
    def _worker_id(self) -> int:
        return self._row.worker_id or 0

    async def write(self, batch: list[Finish], claim: int) -> Written:
        """Record ``batch``, claim up to ``claim`` jobs; retried on errors.

        After an error that leaves the outcome unknown (the connection broke
        after the statement was sent), find out what committed before acting:
        recorded finishes are reported as such, jobs the claim took are run,
        and only what is not in the database is written again.
        """
        rows: list[tuple[Any, ...]] = []
        claimed: list[Claimed] = []
        look_again = False
        to_write = batch
        while True:
            if not self._claims_allowed():
                claim = 0
            if not to_write and not claim:
                break
            claim_id = new_claim_id() if claim else None
            try:
                written, got = await self._statement(to_write, claim, claim_id)
            except psycopg.errors.UniqueViolation as exc:
                # Another worker started a job of the same resource key
                # between our snapshot and our UPDATE: the index refused
                # our claim, and the finishes with it (nothing committed).
                # Write again: the new snapshot sees the winner.
                self._key_conflicts += 1
                if self._key_conflicts > KEY_CONFLICT_RETRIES:
                    await self._errors.report("claim", exc)
                continue
            except psycopg.DataError as exc:
                # Refused by the database: nothing committed.
                if not to_write:
                    await self._errors.report("claim", exc)
                    claim, look_again = 0, True
                    break  # given up: the next kick claims again
                # The data of some row is refused (not the connection):
                # write the rows one by one so that one bad row cannot
                # block the rest; claim with the next statement.
                written, to_write = await self._write_one_by_one(to_write, exc)
                rows.extend(written)
                claim = 0
                if to_write:  # the connection broke on the way: as below
                    to_write = await self._settle(to_write, None, rows, claimed) or []
                continue
            except Exception as exc:  # connection lost, server restarting ...
                # The first error goes straight to finding out: a terminated
                # connection is replaced at once, and the jobs a lost claim
                # took wait meanwhile, unstarted and with their leases
                # running. Errors in a row back off first.
                await self._errors.report(
                    "finish" if to_write else "claim", exc, wait=self._errors.streak > 0
                )
                unsettled = await self._settle(to_write, claim_id, rows, claimed)
                if unsettled is None:
                    break  # a stopping worker's claim alone: its jobs' leases will expire
                # The claim is not repeated here: if it committed, it took
                # what there was; the next kick claims again.
                to_write, claim = unsettled, 0
                look_again = True
                continue
            self._errors.succeeded()
            self._key_conflicts = 0
            rows.extend(written)
            claimed.extend(got)
            break
        return Written(rows, claim, claimed, look_again)

    async def _statement(
        self, batch: list[Finish], claim: int, claim_id: str | None
    ) -> tuple[list[tuple[Any, ...]], list[Claimed]]:
        """Finish ``batch``, release dependents and claim ``claim`` jobs: one round trip.

        One transaction (decision 0015): the finished jobs hand their slots to
        the claimed ones at the commit, so the worker never holds more claims
        than its concurrency. A claim alone is a single autocommit statement.
        """
        statements = lane_statements(
            batch,
            claim,
            channel=self._channel,
            worker_id=self._worker_id,
            worker_name=self._worker_name,
            notify_channel=self._notify_channel,
            finished_channel=self._finished_channel,
            claim_id=claim_id,
        )
        if claim:
            self._stats.claim_queries += 1
        return await execute(self._pool, self._queries, statements)

    async def _settle(
        self,
        batch: list[Finish],
        claim_id: str | None,
        rows: list[tuple[Any, ...]],
        claimed: list[Claimed],
    ) -> list[Finish] | None:
        """After a statement whose outcome is unknown: add what committed of it
        to ``rows`` and ``claimed``; return the finishes still to write (fenced
        when written again, so at worst refused), or None if we gave up."""
        found = await self._find_out(batch, claim_id)
        if found is None:
            return None
        recorded, recovered = found
        if recorded or recovered:
            self._errors.succeeded()  # the statement committed: the database works
        rows.extend(recorded)
        claimed.extend(recovered)
        done = {row[0] for row in recorded}
        return [f for f in batch if f.job_id not in done]

    async def _find_out(
        self, batch: list[Finish], claim_id: str | None
    ) -> tuple[list[tuple[Any, ...]], list[Claimed]] | None:
        """What committed of a statement whose reply was lost; None if we gave up.

        Retried with the usual backoff until the database answers. A stopping
        worker gives up on a claim alone (the lease of what it took expires and
        the jobs are rescued); finishes are looked up until the stop's flush
        deadline cancels the lane.
        """
        if not batch and claim_id is None:
            return [], []
        while True:
            try:
                return await find_out(
                    self._pool,
                    self._queries,
                    batch,
                    claim_id=claim_id,
                    worker_id=self._worker_id,
                )
            except Exception as exc:
                if not batch and not self._claims_allowed():
                    return None
                await self._errors.report("finish" if batch else "claim", exc)

    async def _write_one_by_one(
        self, batch: list[Finish], first_error: BaseException
    ) -> tuple[list[tuple[Any, ...]], list[Finish]]:
        """Write ``batch`` a finish at a time after the database refused its data.

        Returns the rows written and the finishes still to write: those after
        an error that was not about the data (the connection broke), which the
        caller handles as for any batch.
        """
        if len(batch) == 1:
            finish = batch[0]
            finish.dropped = True
            logger.error(
                "job %d attempt %d: its finish was refused by the database (%s); the lease "
                "will expire and the job will be rescued",
                finish.job_id,
                finish.attempt,
                first_error,
            )
            return [], []
        rows: list[tuple[Any, ...]] = []
        for index, finish in enumerate(batch):
            try:
                rows.extend((await self._statement([finish], 0, None))[0])
            except psycopg.DataError as exc:
                rows.extend((await self._write_one_by_one([finish], exc))[0])
            except Exception as exc:
                await self._errors.report("finish", exc)
                return rows, batch[index:]
        return rows, []

    async def claim_limited(self, limit: int) -> LimitedClaim:
        """The guarded claim of rate- or concurrency-limited definitions (decision 0009).

        Lock the limited definitions, then claim in a fresh snapshot. Errors
        are reported and the claim given up: the next statement tries again.
        A connection error after the claim was sent is looked up first, as in
        :meth:`write`: what it took is run.
        """
        definitions, release_s = self._limited
        if not definitions:
            return LimitedClaim([])
        self._stats.claim_queries += 1
        claim_id = new_claim_id()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    self._queries["definition_lock_limited"], {"definitions": definitions}
                )
                locked = [row[0] for row in await cursor.fetchall()]
                if not locked:
                    return LimitedClaim([])
                cursor = await conn.execute(
                    self._queries["job_claim_limited"],
                    {
                        "definitions": locked,
                        "limit": limit,
                        "worker_id": self._row.worker_id,
                        "claim_id": claim_id,
                    },
                )
                rows = await cursor.fetchall()
        except psycopg.Error as exc:
            await self._errors.report("claim", exc)
            if isinstance(exc, psycopg.DatabaseError) and exc.sqlstate is not None:
                return LimitedClaim([])  # refused by the server: nothing committed
            found = await self._find_out([], claim_id)
            return LimitedClaim([] if found is None else found[1])
        except Exception as exc:
            await self._errors.report("claim", exc)
            return LimitedClaim([])
        # A rate-limited backlog: the next release is due one interval on.
        return LimitedClaim(
            [Claimed(*row) for row in rows], release_s if rows and release_s else None
        )
