"""Batched, fenced acknowledgement of finished attempts.

Job tasks hand a :class:`Finish` to the acker and wait for it to be committed.
The acker writes everything pending in one ``job_finish_many`` statement; while
that statement is in flight, new finishes accumulate for the next one. This
batches under load and adds no delay when idle. Every row is fenced by
(id, attempt, lock token) in SQL, so a batch retried after a connection error
can never overwrite a newer state: at worst it is refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
import psycopg

logger = logging.getLogger("orchestra.worker")

Outcome = Literal["succeeded", "failed", "interrupted", "timed_out", "released"]

#: Most rows per statement; a larger backlog takes several statements.
MAX_BATCH = 1000


@attrs.define
class Finish:
    """The end of one attempt, waiting to be committed."""

    job_id: int
    definition: str
    attempt: int
    max_attempts: int
    token: uuid.UUID
    started_at: dt.datetime
    outcome: Outcome
    result: str | None = None
    error: str | None = None
    traceback: str | None = None
    retry_delay_ms: int = 0
    duration_ms: int = 0
    payload_invalid: bool = False
    #: The database refused to record it (bad data); nothing was written.
    dropped: bool = False
    # Filled in from the statement's result:
    committed_status: str | None = None
    committed_run_at: dt.datetime | None = None
    done: asyncio.Future[None] = attrs.field(
        factory=lambda: asyncio.get_running_loop().create_future()
    )


FinishWriter = Callable[[dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]


class Acker:
    """Collects finishes and writes them in batches, one statement at a time."""

    def __init__(
        self,
        write: FinishWriter,
        *,
        worker_id: Callable[[], int],
        worker_name: str,
        notify_channel: str,
        finished_channel: str,
        on_error: Callable[[BaseException], Awaitable[None]],
    ) -> None:
        self._write = write
        self._worker_id = worker_id
        self._worker_name = worker_name
        self._notify_channel = notify_channel
        self._finished_channel = finished_channel
        self._on_error = on_error
        self._pending: list[Finish] = []
        self._has_pending = asyncio.Event()
        self._closing = False

    def submit(self, finish: Finish) -> None:
        """Queue a finish; ``await finish.done`` to know it is committed (or fenced)."""
        self._pending.append(finish)
        self._has_pending.set()

    def close(self) -> None:
        """Finish writing what is pending, then let ``run`` return."""
        self._closing = True
        self._has_pending.set()

    @property
    def backlog(self) -> int:
        """Finishes not yet committed."""
        return len(self._pending)

    async def run(self) -> None:
        """Write batches until closed and drained."""
        while True:
            await self._has_pending.wait()
            self._has_pending.clear()
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                try:
                    rows = await self._write(self._params(batch))
                except psycopg.DataError as exc:
                    # The data of some row is refused (not the connection): write
                    # the rows one by one so that one bad row cannot block the rest.
                    rows = await self._write_one_by_one(batch, exc)
                except Exception as exc:  # connection lost, server restarting ...
                    await self._on_error(exc)  # waits a backoff; the batch is retried
                    continue
                del self._pending[: len(batch)]
                committed = {row[0]: row for row in rows}
                for finish in batch:
                    row = committed.get(finish.job_id)
                    if row is not None:
                        finish.committed_status = row[1]
                        finish.committed_run_at = row[2]
                    if not finish.done.done():
                        finish.done.set_result(None)
            if self._closing and not self._pending:
                return

    async def _write_one_by_one(
        self, batch: list[Finish], first_error: BaseException
    ) -> list[tuple[Any, ...]]:
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
            return []
        rows: list[tuple[Any, ...]] = []
        for finish in batch:
            try:
                rows.extend(await self._write(self._params([finish])))
            except psycopg.DataError as exc:
                rows.extend(await self._write_one_by_one([finish], exc))
        return rows

    def _params(self, batch: list[Finish]) -> dict[str, Any]:
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
            "worker_id": self._worker_id(),
            "worker_name": self._worker_name,
            "notify_channel": self._notify_channel,
            "finished_channel": self._finished_channel,
        }
