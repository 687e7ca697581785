"""The lane writer: runs a lane's statement until it committed.

A lane statement (:mod:`._lanes`) records a batch of finishes and claims the
next jobs in one transaction. Errors are of three kinds, each handled so that
no finish is lost and no job is claimed twice:

* the database refused the statement (a data error, a resource key taken by
  another worker's claim): nothing committed, so it is written again, a bad
  row alone if need be;
* the connection broke after the statement was sent: its outcome is unknown,
  so the writer finds out what committed (recorded finishes, jobs the claim
  took) before writing only the rest again;
* the database is unreachable: failures are reported and retried after
  doubling pauses (:mod:`._retry`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
from psycopg_pool import AsyncConnectionPool

from orchestra._sql import Queries
from orchestra._worker import _lanes
from orchestra._worker._attempts import Claimed, Finish
from orchestra._worker._heartbeat import WorkerRow
from orchestra._worker._report import WorkerStats
from orchestra._worker._retry import DatabaseErrors

logger = logging.getLogger("orchestra.worker")

#: Claims refused in a row by the running-resource-key index before the
#: worker backs off as for a database error (each retry normally succeeds).
KEY_CONFLICT_RETRIES = 3


@attrs.frozen
class Written:
    """What a lane statement committed.

    Attributes:
        rows: what ``job_finish_many`` returned for the batch (:func:`~._lanes.apply_committed`).
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
        channels, worker_name, notify_channel, finished_channel: the statements' parameters.
        errors: reports failures and paces retries.
        claims_allowed: False once the worker stops (it claims nothing more).
        limited: the channels' rate- or concurrency-limited definitions and
            their shortest release interval in seconds.
        stats: counts the claim statements.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        queries: Queries,
        row: WorkerRow,
        *,
        channels: tuple[str, ...],
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
        self._channels = channels
        self._worker_name = worker_name
        self._notify_channel = notify_channel
        self._finished_channel = finished_channel
        self._errors = errors
        self._claims_allowed = claims_allowed
        self._limited = limited
        self._stats = stats
        self._key_conflicts = 0
        #: Claims sent: the channel that goes first among equals rotates with it.
        self._claims = 0

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
        # A cancelled attempt's end was recorded by the cancel: it only frees
        # its slot, which the claim takes over at the commit as for any finish.
        to_write = [f for f in batch if f.written]
        while True:
            if not self._claims_allowed():
                claim = 0
            if not to_write and not claim:
                break
            claim_id = _lanes.new_claim_id() if claim else None
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
        channels = self._channels
        if claim and len(channels) > 1:
            # Channels of equal priority take turns within a claim; which one
            # goes first rotates from claim to claim, so that a claim of one
            # job (concurrency 1) alternates between them (decision 0031).
            first = self._claims % len(channels)
            channels = channels[first:] + channels[:first]
            self._claims += 1
        statements = _lanes.lane_statements(
            batch,
            claim,
            channels=channels,
            worker_id=self._worker_id,
            worker_name=self._worker_name,
            notify_channel=self._notify_channel,
            finished_channel=self._finished_channel,
            claim_id=claim_id,
        )
        if claim:
            self._stats.claim_queries += 1
        return await _lanes.execute(self._pool, self._queries, statements)

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
                return await _lanes.find_out(
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
        claim_id = _lanes.new_claim_id()
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
