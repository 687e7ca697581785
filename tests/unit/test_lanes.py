"""The worker's lanes and job threads, without a database (decision 0015)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid

import pytest

from orchestra._worker import _lanes, _slots
from orchestra._worker._attempts import Finish, Outcome
from orchestra._worker._slots import FLUSH_WINDOW_S, Lane
from orchestra._worker._threads import ThreadRunner

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def make_finish(job_id: int, outcome: Outcome = "succeeded") -> Finish:
    return Finish(
        job_id=job_id,
        definition="d",
        attempt=1,
        max_attempts=3,
        token=uuid.uuid4(),
        started_at=NOW,
        outcome=outcome,
    )


def statements(batch: list[Finish], claim: int) -> list[str]:
    return [
        name
        for name, _ in _lanes.lane_statements(
            batch,
            claim,
            channels=["c"],
            worker_id=1,
            worker_name="w",
            notify_channel="n",
            finished_channel="f",
            claim_id="seed",
        )
    ]


class TestSplit:
    @pytest.mark.parametrize(
        ("concurrency", "sizes"),
        [(1, [1]), (2, [2]), (25, [25]), (99, [99]), (100, [50, 50]), (101, [51, 50])],
    )
    def test_slots_are_split_in_at_most_two_lanes_of_fifty_or_more(
        self, concurrency: int, sizes: list[int]
    ) -> None:
        lanes = _slots.split(concurrency)
        assert [lane.size for lane in lanes] == sizes
        assert sum(lane.free for lane in lanes) == concurrency


class TestStatements:
    def test_finishes_release_and_claim_share_one_transaction_in_this_order(self) -> None:
        names = statements([make_finish(1), make_finish(2, "failed")], 5)
        assert names == ["job_finish_many", "job_release_dependents", "job_claim"]

    def test_only_successes_release_dependents(self) -> None:
        assert statements([make_finish(1, "failed")], 0) == ["job_finish_many"]

    def test_a_claim_alone_is_one_statement(self) -> None:
        assert statements([], 7) == ["job_claim"]

    def test_claim_takes_the_limit_and_finish_the_batch_in_order(self) -> None:
        batch = [make_finish(3), make_finish(1, "interrupted")]
        params = dict(
            _lanes.lane_statements(
                batch,
                4,
                channels=["c"],
                worker_id=9,
                worker_name="w",
                notify_channel="n",
                finished_channel="f",
                claim_id="seed",
            )
        )
        assert params["job_claim"] == {
            "channels": ["c"],
            "now": None,
            "limit": 4,
            "worker_id": 9,
            "claim_id": "seed",
        }
        finish = params["job_finish_many"]
        assert finish is not None
        assert finish["ids"] == [3, 1]
        assert finish["outcomes"] == ["succeeded", "interrupted"]
        assert params["job_release_dependents"] == {"ids": [3], "notify_channel": "n"}


class TestHoldBack:
    def test_nothing_pending_or_nothing_else_running_writes_now(self) -> None:
        lane = Lane(0, 10)
        assert lane.hold_back(100.0) == 0.0
        lane.pending.append(make_finish(1))
        lane.pending_since = 100.0
        assert lane.hold_back(100.0) == 0.0  # no other job of the lane runs

    def test_a_finish_waits_for_its_lane_within_the_window(self) -> None:
        lane = Lane(0, 10, running=3, unfinished=2)
        lane.pending.append(make_finish(1))
        lane.pending_since = 100.0
        assert lane.hold_back(100.0) == pytest.approx(FLUSH_WINDOW_S)
        assert lane.hold_back(100.0 + FLUSH_WINDOW_S / 2) == pytest.approx(FLUSH_WINDOW_S / 2)
        assert lane.hold_back(100.0 + FLUSH_WINDOW_S) == 0.0


class TestThreadRunner:
    def test_results_come_back_on_the_loop_and_every_call_runs_once(self) -> None:
        async def main() -> list[int]:
            loop = asyncio.get_running_loop()
            got: list[int] = []
            done = asyncio.Event()
            threads: set[str] = set()

            def collect(batch: list[int]) -> None:
                assert threading.current_thread() is threading.main_thread()
                got.extend(batch)
                if len(got) == 200:
                    done.set()

            def call(i: int) -> int:
                threads.add(threading.current_thread().name)
                return i

            runner: ThreadRunner[int] = ThreadRunner(8, loop=loop, on_done=collect, name="t")
            for i in range(200):
                runner.submit(lambda i=i: call(i))  # type: ignore[misc]
            await asyncio.wait_for(done.wait(), 10)
            runner.close()
            assert 1 <= len(threads) <= 8
            return got

        assert sorted(asyncio.run(main())) == list(range(200))

    def test_as_many_threads_as_blocked_calls_up_to_the_size(self) -> None:
        """Each job holds a thread of its own: four blocked calls use four threads."""

        async def main() -> int:
            loop = asyncio.get_running_loop()
            release = threading.Event()
            started = threading.Semaphore(0)
            done = asyncio.Event()
            count = 0

            def collect(batch: list[str]) -> None:
                nonlocal count
                count += len(batch)
                if count == 4:
                    done.set()

            def blocked() -> str:
                started.release()
                release.wait(10)
                return threading.current_thread().name

            runner: ThreadRunner[str] = ThreadRunner(4, loop=loop, on_done=collect, name="t")
            for _ in range(4):
                runner.submit(blocked)
            for _ in range(4):  # all four run at once, or this times out
                assert await asyncio.to_thread(started.acquire, True, 10)
            release.set()
            await asyncio.wait_for(done.wait(), 10)
            runner.close()
            return len(runner._threads)

        assert asyncio.run(main()) == 4
