"""The producer: keeps the worker's slots full and hands claimed jobs to the executor.

It starts each lane's statement when :class:`~._slots.Slots` says there is
something to write or room to claim, starts the jobs a statement claimed, and
after the commit reports the finishes and frees their slots (after the
callbacks of a definition that has them). Finishes that arrive in one turn of
the event loop go out in one statement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from orchestra._config import Config
from orchestra._definition import JobDefinition
from orchestra._worker import _attempts, _lanes
from orchestra._worker._attempts import Claimed, Finish
from orchestra._worker._callbacks import run_callbacks
from orchestra._worker._executor import Executor
from orchestra._worker._report import JobReporter
from orchestra._worker._slots import Lane, Slots, Write
from orchestra._worker._writer import LaneWriter


def callbacks_lookup(config: Config) -> Callable[[str], bool]:
    """Whether jobs of a definition have callbacks (they keep their slot until these ran).

    Asked for every finish written: a definition's answer never changes, so it is
    looked up once per name (an unknown name is asked again, it may be registered later).
    """
    known: dict[str, bool] = {}

    def has_callbacks(name: str) -> bool:
        answer = known.get(name)
        if answer is None:
            definition = config.definitions.get(name)
            if definition is None:
                return False
            answer = known[name] = definition.has_callbacks
        return answer

    return has_callbacks


class Producer:
    """Runs the lanes' statements and dispatches what they claim.

    Args:
        config: the queue's Config (its definitions are what can run).
        slots: the worker's slot bookkeeping.
        reporter: counts and reports claims and finishes.
        unknown_definition_delay_ms: how long a job of a definition this
            worker does not carry is handed back for.
        claims_allowed: False once the worker stops.
        wake: wakes the worker's wait loop (a claim is worth trying).
    """

    def __init__(
        self,
        config: Config,
        slots: Slots,
        reporter: JobReporter,
        *,
        unknown_definition_delay_ms: int,
        claims_allowed: Callable[[], bool],
        wake: Callable[[], None],
    ) -> None:
        self._config = config
        self._slots = slots
        self._reporter = reporter
        self._unknown_definition_delay_ms = unknown_definition_delay_ms
        self._claims_allowed = claims_allowed
        self._wake = wake
        self._flush_timers: list[asyncio.TimerHandle | None] = [None] * len(slots.lanes)
        self._kick_scheduled = False
        self._writer: LaneWriter | None = None
        self._executor: Executor | None = None
        self._pool: AsyncConnectionPool[Any] | None = None
        #: Statements of the lanes in flight, and the callbacks of committed finishes.
        self.tasks: set[asyncio.Task[None]] = set()
        #: Set whenever a lane's statement ends (the stop waits on it).
        self.lane_done = asyncio.Event()
        #: The rate-limited backlog's next release, when sooner than the poll.
        self.release_wait_s: float | None = None

    def attach(
        self, writer: LaneWriter, executor: Executor, pool: AsyncConnectionPool[Any]
    ) -> None:
        """The parts that exist once the worker has started."""
        self._writer, self._executor, self._pool = writer, executor, pool

    # -- starting statements -------------------------------------------------------

    def kick_all(self) -> None:
        """Let every lane start its next statement, if it has one."""
        self._kick_scheduled = False
        for lane in self._slots.lanes:
            self._kick(lane)

    def schedule_kick(self) -> None:
        """Kick the lanes once the loop has run what is ready: finishes that
        arrive in the same loop iteration go out in one statement."""
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self.kick_all)

    def _kick(self, lane: Lane) -> None:
        """Start the lane's next statement if it has finishes to write or slots to fill."""
        plan = self._slots.plan(lane, time.monotonic(), claims_allowed=self._claims_allowed())
        if plan is None:
            return
        timer = self._flush_timers[lane.index]
        if isinstance(plan, float):  # hold the finishes back that long
            if timer is None:
                self._flush_timers[lane.index] = asyncio.get_running_loop().call_later(
                    plan, self._flush_due, lane
                )
            return
        if timer is not None:
            timer.cancel()
            self._flush_timers[lane.index] = None
        self._spawn(self._lane_write(plan), name=f"orchestra-lane-{lane.index}")

    def _flush_due(self, lane: Lane) -> None:
        self._flush_timers[lane.index] = None
        self._kick(lane)

    def _spawn(self, coroutine: Any, *, name: str | None = None) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _lane_write(self, write: Write) -> None:
        """Run ``write``; free what its finishes held, start what its claim took."""
        assert self._writer is not None
        notifications = self._slots.notifications
        try:
            written = await self._writer.write(write.batch, write.claim)
            if written.look_again:
                self._slots.look_again()
            _lanes.apply_committed(write.batch, written.rows)
            self._committed(write.batch)
            # Started before the guarded claim, which may back off on an error:
            # a claimed job must not wait unstarted, and unheartbeated, meanwhile.
            allowed = self._claims_allowed()
            for job in written.claimed:
                self._start_job(job, write.lane, allowed=allowed)
            claim, got = written.claim, len(written.claimed)
            if claim and got < claim and allowed:
                limited = await self._writer.claim_limited(claim - got)
                if limited.release_wait_s is not None:
                    self.release_wait_s = limited.release_wait_s
                    self._wake()
                allowed = self._claims_allowed()
                for job in limited.claimed:
                    self._start_job(job, write.lane, allowed=allowed)
                got += len(limited.claimed)
            self._slots.claim_answered(claim, got, notifications)
        finally:
            self._slots.written(write)
            self.lane_done.set()
        if self._slots.maybe_more or write.lane.pending:
            self.kick_all()

    # -- claimed jobs --------------------------------------------------------------------

    def _start_job(self, job: Claimed, lane: Lane, *, allowed: bool) -> None:
        """Run a claimed job (``allowed``: the worker is not stopping)."""
        self._slots.take(job, lane)
        self._reporter.claimed(job, in_flight=self._slots.in_flight)
        definition = self._config.definitions.get(job.definition)
        if not allowed:
            # Found after the stop began (a claim whose reply was lost, looked
            # up): hand it back unharmed, its attempt refunded, rather than
            # start it only to interrupt it.
            self.on_finish(_attempts.finish(job, "released"))
        elif definition is None:
            # Another worker (a newer deployment) may know it: hand it back
            # unharmed rather than destroying it.
            self.on_finish(
                _attempts.finish(job, "released", retry_delay_ms=self._unknown_definition_delay_ms)
            )
        else:
            assert self._executor is not None
            self._executor.run(job, definition)

    def on_finish(self, finish: Finish) -> None:
        """An attempt ended: queue its finish with its lane.

        Dropped when the attempt is no longer ours: it lost its lease and this
        worker claimed the job again, so the database would refuse it anyway.
        """
        if self._slots.submit(finish, time.monotonic()):
            self.schedule_kick()

    # -- after the commit -----------------------------------------------------------

    def _committed(self, batch: list[Finish]) -> None:
        """Finishes committed (or fenced, or dropped): report them, free their slots."""
        for finish in batch:
            self._reporter.committed(finish)
            if self._slots.attempt_of(finish) is None:
                continue  # its job was claimed again, which took over the slot
            definition = self._config.definitions.get(finish.definition)
            if definition is not None and definition.has_callbacks:
                # The slot stays taken until the callbacks return: slow
                # callbacks slow this worker's claiming rather than pile up.
                self._spawn(self._callbacks_then_free(finish, definition))
            else:
                self._free(finish, definition)

    async def _callbacks_then_free(self, finish: Finish, definition: JobDefinition[Any]) -> None:
        try:
            assert self._pool is not None
            await run_callbacks(self._pool, self._config.queries, finish, definition)
        finally:
            self._free(finish, definition)

    def _free(self, finish: Finish, definition: JobDefinition[Any] | None) -> None:
        # A finished job of a limited definition may free a max_concurrency slot.
        limited = definition is not None and definition.max_concurrency is not None
        if self._slots.free(finish, limited=limited):
            self._wake()
