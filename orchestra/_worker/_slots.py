"""The worker's slots: which jobs it holds, what each lane may claim, what a finish frees.

Pure bookkeeping: no I/O, no tasks, no clock of its own (the caller passes
``time.monotonic()`` readings in). The worker shell asks :meth:`Slots.plan`
what a lane should write next, runs that statement, and reports back what
committed; everything that decides *how many* jobs the worker may hold lives
here, in one place, so that it can be tested alone (tests/unit/test_slots.py
drives it through random interleavings of claims, finishes, lease losses and
stops).

The rules:

* the slots form one lane, or two from concurrency 100 (:func:`split`); a
  lane has at most one statement in flight;
* a job holds a slot of its lane from its claim until its finish is
  committed, and, when its definition has callbacks, until they returned;
* a lane claims at most its free slots plus the slots its batch hands over
  at the commit (the finishes without callbacks), so the worker never holds
  more jobs than its concurrency;
* a full claim means there may be more (``maybe_more``); a short one means
  the channel is drained, unless a notification arrived meanwhile;
* an idle worker claims through one lane at a time (``lone_claim``): a poll
  or a wake-up costs one statement, not one per lane;
* a lane holds its finishes back while others of its jobs still run, for at
  most :data:`FLUSH_WINDOW_S`: a batch claimed together mostly finishes
  together, and one statement for all of it beats one per job.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from orchestra._worker._attempts import Claimed, Finish

#: Most finishes per statement; a larger backlog takes several statements.
MAX_BATCH = 1000
#: Most lanes per worker. Two keep the database and the worker's Python busy
#: at once: while one lane's statement runs in the database, the other lane's
#: jobs run in Python. More lanes measured slower (12,700 jobs/s with two,
#: 11,500 with three, 9,700 with four).
LANES = 2
#: Fewest slots per lane. Small lanes mean small batches and many concurrent
#: claimers, which skip each other's locked rows: four processes at
#: concurrency 25 ran at 0.47x the baseline with two lanes each, 0.85x with one.
MIN_LANE_SLOTS = 50
#: How long a lane holds a finish back while others of its jobs still run.
FLUSH_WINDOW_S = 0.002


@attrs.define(eq=False)
class Lane:
    """A share of the worker's slots and the finishes of its jobs not yet written."""

    index: int
    size: int
    #: Jobs held through this lane: claimed, and not yet freed.
    running: int = 0
    #: Of these, the jobs still running (no Finish yet).
    unfinished: int = 0
    pending: list[Finish] = attrs.Factory(list)
    #: time.monotonic() when the oldest pending finish arrived.
    pending_since: float = 0.0
    #: A statement of this lane is in flight (one at a time per lane).
    writing: bool = False

    @property
    def free(self) -> int:
        """Slots of this lane that no job holds."""
        return self.size - self.running

    def hold_back(self, now: float) -> float:
        """Seconds to wait before writing the pending finishes (0: write now).

        Writing waits for the lane's other jobs still running, for at most
        FLUSH_WINDOW_S after the oldest pending finish arrived.
        """
        if not self.pending or not self.unfinished:
            return 0.0
        return max(0.0, self.pending_since + FLUSH_WINDOW_S - now)

    @property
    def busy(self) -> bool:
        """Something of this lane is still to be written or being written."""
        return self.writing or bool(self.pending)


def split(concurrency: int, lanes: int = LANES) -> list[Lane]:
    """``concurrency`` slots in at most ``lanes`` lanes of near-equal size, each of at
    least MIN_LANE_SLOTS slots unless there is only one."""
    count = max(1, min(lanes, concurrency // MIN_LANE_SLOTS))
    return [
        Lane(index, concurrency // count + (1 if index < concurrency % count else 0))
        for index in range(count)
    ]


@attrs.define(eq=False)
class Held:
    """A claimed job holding a slot of ``lane``."""

    job: Claimed
    lane: Lane
    #: Its Finish is with its lane (or it was superseded): it only waits for the commit.
    submitted: bool = False


@attrs.frozen(eq=False)
class Write:
    """A lane statement to run: record ``batch``, then claim up to ``claim`` jobs."""

    lane: Lane
    batch: list[Finish]
    claim: int
    #: A claim with no finish to write, the one such statement of the worker.
    lone: bool


class Slots:
    """Every lane's slots and pending finishes, and when to claim.

    Args:
        concurrency: most jobs held at once.
        has_callbacks: whether jobs of a definition keep their slot after
            their finish committed, until their callbacks returned.
        lanes: most lanes (see :func:`split`).
    """

    def __init__(
        self, concurrency: int, *, has_callbacks: Callable[[str], bool], lanes: int = LANES
    ) -> None:
        self.concurrency = concurrency
        self.lanes = split(concurrency, lanes)
        self.held: dict[int, Held] = {}
        self._has_callbacks = has_callbacks
        #: The last claim was full, or something since suggests new work: claim.
        self.maybe_more = True
        #: Notifications received: a claim that came back short while one
        #: arrived may have missed its job, and must not clear maybe_more.
        self.notifications = 0
        self._lone_claim = False

    # -- what to write ----------------------------------------------------------

    def plan(self, lane: Lane, now: float, *, claims_allowed: bool) -> Write | float | None:
        """What ``lane`` should write now: a :class:`Write` (the lane is then
        writing until :meth:`written`), seconds to hold its finishes back, or
        None (nothing to do, or a statement is in flight)."""
        if lane.writing:
            return None
        wait = lane.hold_back(now) if claims_allowed else 0.0
        if wait:
            return wait
        batch = lane.pending[:MAX_BATCH]
        claim = 0
        if self.maybe_more and claims_allowed:
            # The batch's jobs hold their slots until the commit, where the
            # claim takes them over; except a job with callbacks, which keeps
            # its slot until they return, and a finish whose job was claimed
            # again meanwhile (its lease lapsed), which gave its slot back then.
            claim = lane.free + sum(1 for f in batch if self.hands_over_slot(f))
        lone = not batch
        if lone:
            if claim <= 0 or self._lone_claim:
                return None
            self._lone_claim = True
        del lane.pending[: len(batch)]
        lane.writing = True
        return Write(lane, batch, claim, lone)

    def written(self, write: Write) -> None:
        """The statement of ``write`` ended (committed, or given up)."""
        write.lane.writing = False
        if write.lone:
            self._lone_claim = False

    # -- claims -------------------------------------------------------------------

    def take(self, job: Claimed, lane: Lane) -> Held:
        """A claimed job takes a slot of ``lane``."""
        stale = self.held.get(job.id)
        if stale is not None:
            # Our earlier attempt of this job lost its lease (heartbeats failed
            # for a lease interval) and the job was rescued and claimed again:
            # that attempt's finish will be refused; stop counting it.
            stale.lane.running -= 1
            if not stale.submitted:
                stale.lane.unfinished -= 1
                stale.submitted = True
        held = Held(job, lane)
        self.held[job.id] = held
        lane.running += 1
        lane.unfinished += 1
        return held

    def claim_answered(self, asked: int, got: int, notifications_before: int) -> None:
        """A claim of ``asked`` jobs returned ``got``: a full one suggests more work."""
        if asked:
            self.maybe_more = got >= asked or self.notifications != notifications_before

    def notified(self) -> None:
        """A notification announced new jobs on the channel."""
        self.maybe_more = True
        self.notifications += 1

    def look_again(self) -> None:
        """Claim with the next statement (the poll is due, or a claim failed)."""
        self.maybe_more = True

    # -- finishes -------------------------------------------------------------------

    def attempt_of(self, finish: Finish) -> Held | None:
        """The held job whose attempt ``finish`` ends, if it is still ours."""
        held = self.held.get(finish.job_id)
        if held is None or held.job.token != finish.token:
            return None  # a newer claim of the same job (this attempt lost its lease)
        return held

    def submit(self, finish: Finish, now: float) -> bool:
        """Queue ``finish`` with its job's lane; False (and nothing queued) if
        its attempt is no longer ours or ended already."""
        held = self.attempt_of(finish)
        if held is None or held.submitted:
            return False
        held.submitted = True
        lane = held.lane
        lane.unfinished -= 1
        if not lane.pending:
            lane.pending_since = now
        lane.pending.append(finish)
        return True

    def free(self, finish: Finish, *, limited: bool) -> bool:
        """The committed ``finish``'s job gives its slot back (after its callbacks).

        ``limited``: its definition has a concurrency or rate limit, whose
        freed capacity may let another job of it start. Returns whether a
        claim is worth trying now.
        """
        held = self.attempt_of(finish)
        if held is None:
            return False  # superseded by a newer claim of the job, which uncounted it
        del self.held[finish.job_id]
        held.lane.running -= 1
        # Only a full last claim suggests more work; otherwise the next
        # notification or poll will find it, and an idle worker issues no
        # extra statement.
        if limited:
            self.maybe_more = True
        return self.maybe_more

    def hands_over_slot(self, finish: Finish) -> bool:
        """Whether ``finish``'s slot is free once it is committed: its attempt
        is still ours, and its definition has no callbacks to run first."""
        held = self.held.get(finish.job_id)
        return (
            held is not None
            and held.job.token == finish.token
            and not self._has_callbacks(finish.definition)
        )

    # -- reading ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs held: running, or waiting for their finish to commit."""
        return len(self.held)

    @property
    def busy(self) -> bool:
        """A finish is still to be written or being written."""
        return any(lane.busy for lane in self.lanes)

    def unsubmitted(self) -> list[Held]:
        """Held jobs still running (no Finish yet)."""
        return [held for held in self.held.values() if not held.submitted]

    def submitted_count(self) -> int:
        """Held jobs whose finish waits for its commit."""
        return sum(1 for held in self.held.values() if held.submitted)
