"""Progress reported by running jobs (``ctx.set_progress``), written at most every 0.5 s.

A job may report progress in a tight loop; the database must not see each
value. :class:`ProgressBoard` keeps the latest value of every attempt under
way (a dict entry replaced in place, under a lock: ``def`` jobs report from
their threads, ``async def`` jobs from the loop, child processes through the
pool's pipe); :func:`write_progress` takes what is there and writes it in one
statement (``job_progress_set``), then waits the interval before it looks
again. So a job's value reaches its row at most 0.5 s after it was reported
(the first one at once when the writer is idle), each job is written at most
once per interval, and the worker sends at most one progress statement per
interval, however many jobs report.

When an attempt ends, the executor closes its entry and takes its latest
value, written or not: it goes with the attempt's finish (``Finish.progress``, written
by ``job_finish_many``), so the last value reported is never lost to the rate
limit, and a value reported after the end is dropped. Writes are fenced by the
attempt's lock token: a superseded attempt (rescued, cancelled) writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from orchestra import _db
from orchestra._definition import ProgressSink
from orchestra._sql import Queries
from orchestra._worker._describe import describe
from orchestra._worker._retry import DatabaseErrors, retry_delay_s

logger = logging.getLogger("orchestra.worker")

#: The least time between two progress writes of one worker (so of one job).
PROGRESS_INTERVAL_S = 0.5

Key = tuple[int, uuid.UUID]


class ProgressBoard:
    """The latest progress of each attempt under way, until it is written.

    Thread-safe: :meth:`post` is called from job threads and from the loop;
    everything else runs on the worker's loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[Key] = set()
        self._pending: dict[Key, str] = {}
        # The latest value of each open attempt, written or not: the finish
        # carries it, so a value the writer took but could not land (the row
        # busy with the finish itself, or the finish committed first) is not lost.
        self._latest: dict[Key, str] = {}
        self._wake: Callable[[], None] | None = None
        # The writer was woken and has not taken the values yet: later posts
        # need not wake it again (a tight loop costs a dict store, no call
        # into the loop).
        self._signalled = False

    def bind(self, wake: Callable[[], None]) -> None:
        """Set what wakes the writer (thread-safe) when a value arrives."""
        self._wake = wake

    def open(self, job_id: int, token: uuid.UUID) -> ProgressSink:
        """Start taking the progress of an attempt; returns what its ctx reports to."""
        key = (job_id, token)
        with self._lock:
            self._open.add(key)
        return functools.partial(self.post, key)

    def post(self, key: Key, text: str) -> None:
        """Keep ``text`` as the attempt's latest value (a value of an ended attempt is dropped)."""
        with self._lock:
            if key not in self._open:
                return
            self._pending[key] = text
            self._latest[key] = text
            wake = None if self._signalled else self._wake
            if wake is not None:
                self._signalled = True
        if wake is not None:
            wake()

    def close(self, job_id: int, token: uuid.UUID) -> str | None:
        """Stop taking the attempt's progress; returns its latest value, if it reported any.

        The latest, not only the one not written yet: the writer may hold it
        still, and its write may yet miss the row (writing it twice is harmless).
        """
        key = (job_id, token)
        with self._lock:
            self._open.discard(key)
            self._pending.pop(key, None)
            return self._latest.pop(key, None)

    def take(self) -> dict[Key, str]:
        """Every value not written yet, handed to the writer."""
        with self._lock:
            taken, self._pending = self._pending, {}
            self._signalled = False
            return taken

    def put_back(self, values: dict[Key, str]) -> bool:
        """Values the writer could not write, kept unless a newer one arrived or the
        attempt ended meanwhile; returns whether any was kept."""
        with self._lock:
            kept = False
            for key, text in values.items():
                if key in self._open and key not in self._pending:
                    self._pending[key] = text
                    kept = True
            return kept


def progress_params(values: dict[Key, str]) -> dict[str, Any]:
    """The parameters of ``job_progress_set``."""
    return {
        "ids": [job_id for job_id, _ in values],
        "tokens": [token for _, token in values],
        "progresses": list(values.values()),
    }


async def write_progress(
    board: ProgressBoard,
    pool: AsyncConnectionPool[Any],
    queries: Queries,
    *,
    errors: DatabaseErrors,
    daemon_name: str,
    interval_s: float = PROGRESS_INTERVAL_S,
) -> None:
    """Write the board's values when there are some, at most once per ``interval_s``;
    until cancelled. A failed write keeps its values for the next pass, later
    and later while the database stays unreachable."""
    wakeup = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wake() -> None:
        # A job thread may outlive the worker's loop (threads cannot be
        # killed): its late report must not raise in the job.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wakeup.set)

    board.bind(wake)
    failures = 0
    while True:
        await wakeup.wait()
        wakeup.clear()
        values = board.take()
        if not values:
            continue
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(queries["job_progress_set"], progress_params(values))
                row = await cursor.fetchone()
            busy = set(row[1]) if row is not None else set()
            failures = 0
            # Rows a finish or heartbeat held: again at the next pass.
            retry = {key: text for key, text in values.items() if key[0] in busy}
        except Exception as exc:
            failures += 1
            await errors.drop_dead_connections(exc)
            logger.warning(
                "%s: could not write the progress of %d job(s): %s",
                daemon_name,
                len(values),
                _db.redact(describe(exc)),
            )
            retry = values
        if board.put_back(retry):
            wakeup.set()
        await asyncio.sleep(max(interval_s, retry_delay_s(failures)) if failures else interval_s)
