"""Lifecycle callbacks: on_attempt, then on_success or on_failure, after the commit."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from orchestra import _db
from orchestra._definition import Callback, JobDefinition
from orchestra._records import job_from_row
from orchestra._sql import Queries
from orchestra._worker._attempts import Finish
from orchestra._worker._describe import describe

logger = logging.getLogger("orchestra.worker")


def due_callbacks(finish: Finish, definition: JobDefinition[Any]) -> list[Callback]:
    """The callbacks a committed finish calls, in order: on_attempt, then on_success or
    on_failure (the final failure only); none for a fenced, dropped or handed-back attempt."""
    status = finish.committed_status
    if finish.dropped or status is None or finish.outcome == "released":
        return []
    callbacks = [definition.on_attempt]
    if status == "succeeded":
        callbacks.append(definition.on_success)
    elif status == "failed":
        callbacks.append(definition.on_failure)
    return [c for c in callbacks if c is not None]


async def run_callbacks(
    pool: AsyncConnectionPool[Any],
    queries: Queries,
    finish: Finish,
    definition: JobDefinition[Any],
) -> None:
    """Call on_attempt, then on_success or on_failure, once each, with the updated job.

    Only for an attempt whose end was committed: a fenced or handed-back
    attempt did not happen as far as the queue is concerned. A callback
    that raises is logged and changes nothing (the job's state is
    committed already). If this process dies between the commit and the
    call, the callbacks of that attempt are lost: they are at most once;
    use events or a follow-up job for what must not be lost.
    """
    todo = due_callbacks(finish, definition)
    if not todo:
        return
    try:
        async with pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                queries["manage_job_get"], {"id": finish.job_id, "with_attempts": True}
            )
            row = await cursor.fetchone()
    except Exception as exc:
        logger.warning(
            "job %d: could not read the job back for its callbacks, skipped: %s",
            finish.job_id,
            _db.redact(describe(exc)),
        )
        return
    if row is None:  # deleted in the meantime
        return
    job = job_from_row(row)
    for callback in todo:
        try:
            if inspect.iscoroutinefunction(callback):
                await callback(job)
            else:
                await asyncio.to_thread(callback, job)
        except Exception:
            callback_raised(finish.job_id, callback, definition)


def callback_raised(job_id: int, callback: Callback, definition: JobDefinition[Any]) -> None:
    """Log the exception being handled, raised by ``callback``: it changes nothing."""
    logger.exception(
        "job %d: callback %s of %r raised; the job is not affected",
        job_id,
        getattr(callback, "__qualname__", repr(callback)),
        definition.name,
    )
