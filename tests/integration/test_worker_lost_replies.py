"""A reply lost with the connection leaves a statement's outcome unknown, not failed.

The worker finds out what committed (the lock token tells: a claim's tokens derive
from a seed of the worker's, a finish leaves its token in the attempt log) and
acts on that: claimed jobs run, recorded finishes are reported, nothing fails
without having run.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from orchestra import Config, JobDefinition, Worker, events
from orchestra._worker import _attempts, _lanes
from orchestra._worker._attempts import Claimed
from orchestra.testing import EventRecorder
from tests._running import running


def claim(
    db: psycopg.Connection[Any], config: Config, claim_id: str, worker_id: int, limit: int = 10
) -> list[Claimed]:
    rows = db.execute(
        config.queries["job_claim"],
        {
            "channels": ["_default"],
            "now": None,
            "limit": limit,
            "worker_id": worker_id,
            "claim_id": claim_id,
        },
    ).fetchall()
    return [Claimed(*row) for row in rows]


def find_out(
    config: Config, batch: list[_attempts.Finish], claim_id: str | None, worker_id: int
) -> tuple[list[tuple[Any, ...]], list[Claimed]]:
    async def look() -> tuple[list[tuple[Any, ...]], list[Claimed]]:
        async with AsyncConnectionPool(config.dsn, min_size=1, max_size=1, open=False) as pool:
            return await _lanes.find_out(
                pool, config.queries, batch, claim_id=claim_id, worker_id=worker_id
            )

    return asyncio.run(look())


def finish_many(db: psycopg.Connection[Any], config: Config, batch: list[_attempts.Finish]) -> None:
    db.execute(
        config.queries["job_finish_many"],
        _lanes.finish_params(
            batch,
            worker_id=1,
            worker_name="w",
            notify_channel=config.notify_channel,
            finished_channel=config.finished_channel,
        ),
    )


class TestFindingOut:
    def test_each_claim_finds_its_own_jobs_and_no_other_claims(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        noop = JobDefinition(config, name="noop", job_function=lambda: None)
        noop.defer_many([{}] * 5)
        first_seed, second_seed = _lanes.new_claim_id(), _lanes.new_claim_id()
        first = claim(db, config, first_seed, worker_id=1, limit=3)
        second = claim(db, config, second_seed, worker_id=1, limit=2)
        assert {c.id for c in find_out(config, [], first_seed, 1)[1]} == {c.id for c in first}
        assert {c.id for c in find_out(config, [], second_seed, 1)[1]} == {c.id for c in second}
        assert find_out(config, [], _lanes.new_claim_id(), 1) == ([], [])
        assert len({c.token for c in [*first, *second]}) == 5

    def test_the_jobs_of_a_claim_whose_reply_was_lost_are_recovered_whole(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        noop = JobDefinition(config, name="noop", job_function=lambda: None)
        noop.defer_many([{"n": n} for n in range(4)])
        seed = _lanes.new_claim_id()
        claimed = claim(db, config, seed, worker_id=3)
        _, recovered = find_out(config, [], claim_id=seed, worker_id=3)
        assert sorted(recovered, key=lambda c: c.id) == sorted(claimed, key=lambda c: c.id)
        # Another worker's id finds nothing: the seed is the worker's own.
        assert find_out(config, [], claim_id=seed, worker_id=4) == ([], [])

    def test_a_recorded_finish_is_told_apart_from_one_that_never_committed(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        noop = JobDefinition(config, name="noop", job_function=lambda: None, num_attempts=2)
        noop.defer_many([{"n": n} for n in range(3)])
        first, second, third = sorted(
            claim(db, config, _lanes.new_claim_id(), 1), key=lambda c: c.id
        )
        succeeded = _attempts.finish(first, "succeeded", result="1")
        failed = _attempts.finish(second, "failed", error="E", retry_delay_ms=60_000)
        unsent = _attempts.finish(third, "succeeded", result="3")
        finish_many(db, config, [succeeded, failed])
        rows, _ = find_out(config, [succeeded, failed, unsent], claim_id=None, worker_id=1)
        by_id = {row[0]: row for row in rows}
        assert set(by_id) == {first.id, second.id}
        assert by_id[first.id][1] == "succeeded"
        assert by_id[second.id][1] == "available"  # one attempt left: retried
        assert by_id[second.id][2] is not None

    def test_a_finish_refused_by_the_fence_is_not_taken_for_recorded(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The job was rescued and claimed again: the old attempt's finish is not ours."""
        noop = JobDefinition(config, name="noop", job_function=lambda: None)
        noop.defer({})
        (old,) = claim(db, config, _lanes.new_claim_id(), 1)
        db.execute(
            f'UPDATE "{config.schema}".job SET status = %s, lock_token = NULL, '
            "locked_until = NULL, locked_by = NULL WHERE id = %s",
            ["available", old.id],
        )
        (new,) = claim(db, config, _lanes.new_claim_id(), 2)
        finish_many(db, config, [_attempts.finish(new, "succeeded", result="1")])
        stale = _attempts.finish(old, "succeeded", result="1")
        assert find_out(config, [stale], claim_id=None, worker_id=1) == ([], [])


@pytest.mark.parametrize("every", [1, 3])
def test_replies_lost_after_the_commit_fail_nothing_and_lose_no_success(
    config: Config,
    db: psycopg.Connection[Any],
    recorder: EventRecorder,
    monkeypatch: pytest.MonkeyPatch,
    every: int,
) -> None:
    """With one attempt per job, a worker whose statements commit but whose replies
    are lost (every statement, or every third) runs each job once and reports each
    success once."""
    real_execute = _lanes.execute
    calls = itertools.count(1)

    async def execute_then_lose_the_reply(*args: Any, **kwargs: Any) -> Any:
        result = await real_execute(*args, **kwargs)
        if next(calls) % every == 0:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return result

    monkeypatch.setattr(_lanes, "execute", execute_then_lose_the_reply)
    ran: list[int] = []

    def record(payload: dict[str, int]) -> int:
        ran.append(payload["n"])
        return payload["n"]

    count = 60
    work = JobDefinition(config, name="work", job_function=record, num_attempts=1)
    handles = work.defer_many([{"n": n} for n in range(count)])
    worker = Worker(config, concurrency=8, event_handler=recorder, name="lossy")
    with running(worker):
        recorder.wait_for(events.WorkerJobSucceeded, count=count, timeout=60)
    assert worker.join(timeout=0)
    assert sorted(ran) == list(range(count))
    successes = recorder.of_type(events.WorkerJobSucceeded)
    assert sorted(e.job_id for e in successes) == sorted(h.id for h in handles)
    assert recorder.of_type(events.WorkerJobFenced) == []
    assert recorder.of_type(events.WorkerJobFailed) == []
    statuses = db.execute(
        f'SELECT status::text, count(*) FROM "{config.schema}".all_jobs GROUP BY 1'
    ).fetchall()
    assert statuses == [("succeeded", count)]
    assert [h.result(timeout=10) for h in handles] == list(range(count))
