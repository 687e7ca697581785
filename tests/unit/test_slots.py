"""The worker's slot bookkeeping, alone: claims never exceed the concurrency, no slot leaks.

A Hypothesis state machine plays the worker shell and the database against
:class:`Slots` in random interleavings: lanes plan statements, the database
commits them (claiming fewer jobs than asked, refusing some finishes, handing
back a job whose lease this worker lost), attempts end, callbacks return,
notifications arrive, the worker stops. After every step the counts must
match the jobs held; once everything has drained, nothing may be held.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from orchestra._worker import _attempts
from orchestra._worker._attempts import Claimed, Finish
from orchestra._worker._slots import FLUSH_WINDOW_S, Lane, Slots, Write

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
WITH_CALLBACKS = "with-callbacks"


def claimed(job_id: int, definition: str) -> Claimed:
    return Claimed(
        id=job_id,
        definition=definition,
        payload="{}",
        attempt=1,
        max_attempts=3,
        token=uuid.uuid4(),
        started_at=NOW,
        run_at=NOW,
        priority=0,
        trace_context=None,
    )


class SlotMachine(RuleBasedStateMachine):
    """The shell's and the database's moves, against one Slots."""

    def __init__(self) -> None:
        super().__init__()
        self.slots = Slots(1, has_callbacks=lambda name: name == WITH_CALLBACKS)
        self.writes: dict[int, tuple[Write, int]] = {}
        #: Lane statements whose guarded claim (of limited definitions) is still out:
        #: the write, the notifications seen at its plan, its claim, the jobs taken so far.
        self.guarded: dict[int, tuple[Write, int, int, int]] = {}
        self.callbacks: list[Finish] = []
        #: Attempts that lost their job to a newer claim of it, still running here.
        self.superseded: list[Claimed] = []
        self.ids = itertools.count(1)
        self.now = 0.0
        self.stopped = False
        self.steps = 0

    def keeps_slot_after_commit(self, finish: Finish) -> bool:
        """As the producer decides after a commit: a job of ours with callbacks keeps its slot."""
        return self.slots.attempt_of(finish) is not None and finish.definition == WITH_CALLBACKS

    @initialize(concurrency=st.sampled_from([1, 2, 3, 7, 60, 100, 101, 150]))
    def start(self, concurrency: int) -> None:
        self.slots = Slots(concurrency, has_callbacks=lambda name: name == WITH_CALLBACKS)

    # -- the shell --------------------------------------------------------------------

    @rule(lane=st.integers(0, 1), elapsed=st.sampled_from([0.0, FLUSH_WINDOW_S / 2, 1.0]))
    def kick(self, lane: int, elapsed: float) -> None:
        self.steps += 1
        self.now += elapsed
        target = self.slots.lanes[lane % len(self.slots.lanes)]
        was_writing = target.writing
        plan = self.slots.plan(target, self.now, claims_allowed=not self.stopped)
        if was_writing:
            assert plan is None  # one statement per lane at a time
        if isinstance(plan, Write):
            assert target.index not in self.writes
            assert len(plan.batch) > 0 or plan.claim > 0
            if self.stopped:
                assert plan.claim == 0
            # The claim may fill only the slots free once the batch committed:
            # a batch finish frees its job's slot if that job is still held by
            # that very attempt and has no callbacks to run first.
            freed = {(f.job_id, f.token) for f in plan.batch if f.definition != WITH_CALLBACKS}
            staying = [
                held
                for held in self.slots.held.values()
                if held.lane is target and (held.job.id, held.job.token) not in freed
            ]
            assert len(staying) + plan.claim <= target.size, "the claim would overfill the lane"
            self.writes[target.index] = (plan, self.slots.notifications)
        elif isinstance(plan, float):
            assert 0 < plan <= FLUSH_WINDOW_S + 1e-9  # float rounding of the window's end

    @precondition(lambda self: bool(self.writes))
    @rule(
        data=st.data(),
        with_callbacks=st.booleans(),
        limited=st.booleans(),
        lease_lost=st.booleans(),
        # A claim given up after an error: now and then.
        gave_up_claim=st.sampled_from([False, False, False, True]),
    )
    def commit(
        self,
        data: st.DataObject,
        with_callbacks: bool,
        limited: bool,
        lease_lost: bool,
        gave_up_claim: bool,
    ) -> None:
        self.steps += 1
        index = data.draw(st.sampled_from(sorted(self.writes)))
        write, notifications = self.writes.pop(index)
        guarded = False
        try:
            guarded = self._commit(
                write, notifications, data, with_callbacks, limited, lease_lost, gave_up_claim
            )
        finally:
            if not guarded:
                self.slots.written(write)  # also when an assertion failed: teardown drains

    def _commit(
        self,
        write: Write,
        notifications: int,
        data: st.DataObject,
        with_callbacks: bool,
        limited: bool,
        lease_lost: bool,
        gave_up_claim: bool,
    ) -> bool:
        """Commit ``write``; True if its guarded claim is still out."""
        lane = write.lane
        fenced = (
            data.draw(st.sets(st.sampled_from(range(len(write.batch))))) if write.batch else set()
        )
        for position, finish in enumerate(write.batch):
            finish.committed_status = None if position in fenced else "succeeded"
        for finish in write.batch:
            if self.slots.attempt_of(finish) is None:
                continue
            if self.keeps_slot_after_commit(finish):
                self.callbacks.append(finish)
            else:
                self.slots.free(finish, limited=limited)
        claim = 0 if gave_up_claim else write.claim
        got = data.draw(st.integers(0, claim))
        self._take(lane, got, data, with_callbacks=with_callbacks, lease_lost=lease_lost)
        if claim and got < claim and not self.stopped and data.draw(st.booleans()):
            # The guarded claim of limited definitions follows after an await:
            # anything may happen meanwhile, and the lane is still writing.
            self.guarded[lane.index] = (write, notifications, claim, got)
            return True
        self.slots.claim_answered(claim, got, notifications)
        return False

    def _take(
        self, lane: Lane, count: int, data: st.DataObject, *, with_callbacks: bool, lease_lost: bool
    ) -> None:
        for _ in range(count):
            # A job of ours whose lease lapsed may come back in a claim
            # (rescued, then claimed again), its earlier attempt still running
            # here or its finish not yet committed.
            held = sorted(self.slots.held)
            if lease_lost and held and data.draw(st.booleans()):
                job_id = data.draw(st.sampled_from(held))
                self.superseded.append(self.slots.held[job_id].job)
            else:
                job_id = next(self.ids)
            definition = WITH_CALLBACKS if with_callbacks else "plain"
            self.slots.take(claimed(job_id, definition), lane)
            assert lane.running <= lane.size, "a claim took more jobs than its lane has slots"

    @precondition(lambda self: bool(self.guarded))
    @rule(data=st.data(), with_callbacks=st.booleans(), lease_lost=st.booleans())
    def guarded_claim_returns(
        self, data: st.DataObject, with_callbacks: bool, lease_lost: bool
    ) -> None:
        self.steps += 1
        index = data.draw(st.sampled_from(sorted(self.guarded)))
        write, notifications, claim, got = self.guarded.pop(index)
        try:
            more = data.draw(st.integers(0, claim - got))
            self._take(write.lane, more, data, with_callbacks=with_callbacks, lease_lost=lease_lost)
            self.slots.claim_answered(claim, got + more, notifications)
        finally:
            self.slots.written(write)

    @precondition(lambda self: bool(self.superseded))
    @rule(data=st.data())
    def a_superseded_attempt_ends(self, data: st.DataObject) -> None:
        """The finish of an attempt whose job was claimed again changes nothing."""
        job = self.superseded.pop(data.draw(st.integers(0, len(self.superseded) - 1)))
        before = [(lane.running, lane.unfinished, len(lane.pending)) for lane in self.slots.lanes]
        assert not self.slots.submit(_attempts.finish(job, "succeeded"), self.now)
        after = [(lane.running, lane.unfinished, len(lane.pending)) for lane in self.slots.lanes]
        assert after == before

    @precondition(lambda self: bool(self.slots.unsubmitted()))
    @rule(data=st.data(), outcome=st.sampled_from(["succeeded", "failed", "released"]))
    def attempt_ends(self, data: st.DataObject, outcome: _attempts.Outcome) -> None:
        held = data.draw(st.sampled_from(self.slots.unsubmitted()))
        assert self.slots.submit(_attempts.finish(held.job, outcome), self.now)

    @rule(job_id=st.integers(1, 50))
    def a_strangers_attempt_ends(self, job_id: int) -> None:
        """A finish with a token no claim of ours returned changes nothing."""
        before = [(lane.running, lane.unfinished, len(lane.pending)) for lane in self.slots.lanes]
        assert not self.slots.submit(_attempts.finish(claimed(job_id, "plain"), "failed"), self.now)
        after = [(lane.running, lane.unfinished, len(lane.pending)) for lane in self.slots.lanes]
        assert after == before

    @precondition(lambda self: bool(self.callbacks))
    @rule(data=st.data(), limited=st.booleans())
    def callbacks_return(self, data: st.DataObject, limited: bool) -> None:
        finish = self.callbacks.pop(data.draw(st.integers(0, len(self.callbacks) - 1)))
        self.slots.free(finish, limited=limited)

    @rule(notification=st.booleans())
    def something_suggests_more_work(self, notification: bool) -> None:
        if notification:
            self.slots.notified()
        else:
            self.slots.look_again()  # the poll is due, or a claim failed
        assert self.slots.maybe_more

    # Late in a run only: a stopped worker claims nothing, which ends what
    # the rest of the run can explore.
    @precondition(lambda self: self.steps >= 25)
    @rule()
    def stop(self) -> None:
        self.stopped = True

    # -- what must always hold ----------------------------------------------------------

    @invariant()
    def counts_match_the_jobs_held(self) -> None:
        assert len(self.slots.held) <= self.slots.concurrency
        assert self.slots.in_flight == len(self.slots.held)
        for lane in self.slots.lanes:
            mine = [held for held in self.slots.held.values() if held.lane is lane]
            assert lane.running == len(mine)
            assert lane.unfinished == sum(1 for held in mine if not held.submitted)
            assert 0 <= lane.unfinished <= lane.running <= lane.size
            assert lane.writing == (lane.index in self.writes or lane.index in self.guarded)
        assert sum(lane.size for lane in self.slots.lanes) == self.slots.concurrency

    def teardown(self) -> None:
        """Stop and drain as the worker does: nothing may stay held."""
        self.stopped = True
        for held in self.slots.unsubmitted():
            assert self.slots.submit(_attempts.interrupted(held.job, 0.0), self.now)
        for index in sorted(self.guarded):
            write, notifications, claim, got = self.guarded.pop(index)
            self.slots.claim_answered(claim, got, notifications)
            self.slots.written(write)
        for _ in range(10_000):
            for index in sorted(self.writes):
                write, notifications = self.writes.pop(index)
                for finish in write.batch:
                    finish.committed_status = "failed"
                    if self.keeps_slot_after_commit(finish):
                        self.callbacks.append(finish)
                    else:
                        self.slots.free(finish, limited=False)
                self.slots.claim_answered(write.claim, 0, notifications)
                self.slots.written(write)
            while self.callbacks:
                self.slots.free(self.callbacks.pop(), limited=False)
            if not self.slots.busy:
                break
            for lane in self.slots.lanes:
                plan = self.slots.plan(lane, self.now, claims_allowed=False)
                assert not isinstance(plan, float), "a stopping worker holds nothing back"
                if isinstance(plan, Write):
                    assert plan.claim == 0
                    self.writes[lane.index] = (plan, self.slots.notifications)
        assert not self.slots.held, "a slot leaked"
        for lane in self.slots.lanes:
            assert (lane.running, lane.unfinished, lane.pending, lane.writing) == (0, 0, [], False)


TestSlotMachine = SlotMachine.TestCase
TestSlotMachine.settings = settings(max_examples=400, stateful_step_count=80, deadline=None)
# About 15 s on an idle machine; a busy one (a shared CI host) may take several
# times that, which the suite's default 120 s timeout would turn into a failure.
pytestmark = pytest.mark.timeout(900)


class TestPlan:
    def test_an_idle_worker_claims_through_one_lane_at_a_time(self) -> None:
        slots = Slots(100, has_callbacks=lambda name: False)
        first, second = slots.lanes
        write = slots.plan(first, 0.0, claims_allowed=True)
        assert isinstance(write, Write) and write.lone and write.claim == 50
        assert slots.plan(second, 0.0, claims_allowed=True) is None
        slots.written(write)
        assert isinstance(slots.plan(second, 0.0, claims_allowed=True), Write)

    def test_a_short_claim_ends_the_claiming_until_something_suggests_more(self) -> None:
        slots = Slots(10, has_callbacks=lambda name: False)
        (lane,) = slots.lanes
        write = slots.plan(lane, 0.0, claims_allowed=True)
        assert isinstance(write, Write)
        slots.claim_answered(write.claim, 3, slots.notifications)
        slots.written(write)
        assert not slots.maybe_more
        assert slots.plan(lane, 0.0, claims_allowed=True) is None
        slots.look_again()
        assert isinstance(slots.plan(lane, 0.0, claims_allowed=True), Write)

    def test_a_notification_during_a_short_claim_keeps_the_worker_claiming(self) -> None:
        slots = Slots(10, has_callbacks=lambda name: False)
        (lane,) = slots.lanes
        write = slots.plan(lane, 0.0, claims_allowed=True)
        assert isinstance(write, Write)
        before = slots.notifications
        slots.notified()
        slots.claim_answered(write.claim, 0, before)
        assert slots.maybe_more

    def test_finishes_hand_their_slots_to_the_claim_except_with_callbacks(self) -> None:
        slots = Slots(4, has_callbacks=lambda name: name == WITH_CALLBACKS)
        (lane,) = slots.lanes
        for job_id, definition in enumerate(["plain", "plain", WITH_CALLBACKS, "plain"], 1):
            slots.take(claimed(job_id, definition), lane)
        for held in list(slots.held.values())[:3]:
            slots.submit(_attempts.finish(held.job, "succeeded"), 0.0)
        slots.submit(_attempts.finish(slots.held[4].job, "succeeded"), 1.0)
        write = slots.plan(lane, 1.0, claims_allowed=True)
        assert isinstance(write, Write)
        assert len(write.batch) == 4 and write.claim == 3

    @pytest.mark.parametrize("elapsed", [0.0, FLUSH_WINDOW_S / 2])
    def test_a_finish_is_held_back_while_others_of_its_lane_run(self, elapsed: float) -> None:
        slots = Slots(2, has_callbacks=lambda name: False)
        (lane,) = slots.lanes
        first, second = claimed(1, "plain"), claimed(2, "plain")
        slots.take(first, lane)
        slots.take(second, lane)
        slots.submit(_attempts.finish(first, "succeeded"), 10.0)
        wait = slots.plan(lane, 10.0 + elapsed, claims_allowed=True)
        assert wait == pytest.approx(FLUSH_WINDOW_S - elapsed)
        assert isinstance(slots.plan(lane, 10.0 + elapsed, claims_allowed=False), Write)

    def test_a_job_claimed_again_after_its_lease_lapsed_holds_one_slot(self) -> None:
        slots = Slots(100, has_callbacks=lambda name: False)
        first, second = slots.lanes
        old = claimed(7, "plain")
        slots.take(old, first)
        new = claimed(7, "plain")
        slots.take(new, second)
        assert (first.running, first.unfinished, second.running) == (0, 0, 1)
        assert not slots.submit(_attempts.finish(old, "succeeded"), 0.0)
        assert slots.submit(_attempts.finish(new, "succeeded"), 0.0)

    def test_a_finish_superseded_before_its_write_hands_no_slot_to_the_claim(self) -> None:
        slots = Slots(2, has_callbacks=lambda name: False)
        (lane,) = slots.lanes
        old = claimed(7, "plain")
        slots.take(old, lane)
        slots.submit(_attempts.finish(old, "succeeded"), 0.0)
        slots.take(claimed(7, "plain"), lane)  # its lease lapsed: claimed again
        write = slots.plan(lane, 1.0, claims_allowed=True)
        assert isinstance(write, Write)
        assert write.claim == lane.free == 1  # the stale finish gave its slot back already
