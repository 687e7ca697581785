"""Rate limits and max_concurrency across workers, through the guarded claim."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from orchestra import Config, JobContext, JobDefinition, Worker, events
from orchestra.testing import EventRecorder


@contextlib.contextmanager
def workers(
    config: Config, recorder: EventRecorder, count: int, concurrency: int
) -> Iterator[None]:
    """Run ``count`` workers in threads for the duration of the block."""
    started = [
        Worker(
            config,
            concurrency=concurrency,
            name=f"w{i}",
            event_handler=recorder,
            process_interval_ms=100,
        )
        for i in range(count)
    ]
    for worker in started:
        worker.start()
    try:
        yield
    finally:
        for worker in started:
            worker.stop()
        for worker in started:
            worker.join(timeout=20)


def starts(db: psycopg.Connection[Any], config: Config, definition: str) -> list[Any]:
    """Start times of every attempt of a definition's jobs, in order."""
    rows = db.execute(
        f'SELECT a.started_at FROM "{config.schema}".all_job_attempts a JOIN "{config.schema}".all_jobs j '
        "ON j.id = a.job_id WHERE j.definition = %s ORDER BY a.started_at",
        [definition],
    ).fetchall()
    return [r[0] for r in rows]


class TestReleaseInterval:
    def test_starts_are_spaced_fleet_wide_and_others_are_not_slowed(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Starts of a rate-limited definition over three workers are >= R apart; another definition runs at once."""
        limited = JobDefinition(
            config, name="limited", job_function=lambda p: None, release_interval_ms=250
        )
        free = JobDefinition(config, name="free", job_function=lambda p: None)
        limited.defer_many([{} for _ in range(6)])
        free.defer_many([{} for _ in range(30)])
        with workers(config, recorder, count=3, concurrency=4):
            free_done = recorder.wait_for(
                events.WorkerJobSucceeded, lambda e: e.definition == "free", count=30
            )
            recorder.wait_for(
                events.WorkerJobSucceeded, lambda e: e.definition == "limited", count=6, timeout=20
            )
        times = starts(db, config, "limited")
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert len(times) == 6 and min(gaps) >= 0.25
        last_release = db.execute(
            f"SELECT last_released_at FROM \"{config.schema}\".job_definition WHERE name = 'limited'"
        ).fetchone()
        assert last_release == (times[-1],)
        done = recorder.of_type(events.WorkerJobSucceeded)
        last_limited = max(e.timestamp for e in done if e.definition == "limited")
        assert (
            max(e.timestamp for e in free_done) < last_limited
        )  # the free ones did not queue behind
        assert {e.attempt for e in recorder.of_type(events.WorkerJobClaimed)} == {
            1
        }  # held back: no attempt spent

    def test_retries_count_as_releases(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A retried attempt also waits for the release interval."""

        def flaky(payload: dict[str, Any], ctx: JobContext) -> None:
            if ctx.attempt < 3:
                raise RuntimeError("again")

        JobDefinition(
            config,
            name="flaky",
            job_function=flaky,
            release_interval_ms=300,
            num_attempts=3,
            backoff="none",
        ).defer({})
        with workers(config, recorder, count=2, concurrency=2):
            recorder.wait_for(events.WorkerJobSucceeded, timeout=20)
        times = starts(db, config, "flaky")
        assert len(times) == 3
        assert all((b - a).total_seconds() >= 0.3 for a, b in itertools.pairwise(times))

    def test_zero_interval_is_not_limited(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """With release_interval_ms 0 (and no max_concurrency) jobs take the fast, unguarded path."""
        JobDefinition(
            config, name="plain", job_function=lambda p: None, release_interval_ms=0
        ).defer({})
        JobDefinition(config, name="capped", job_function=lambda p: None, max_concurrency=3).defer(
            {}
        )
        flags = db.execute(
            f'SELECT definition, limited FROM "{config.schema}".job ORDER BY definition'
        ).fetchall()
        assert flags == [("capped", True), ("plain", False)]

    def test_changing_limits_reflags_unfinished_jobs(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """When a definition gains or loses a limit, its unfinished jobs move to the matching claim path."""
        JobDefinition(config, name="job", job_function=lambda p: None).defer({})
        newer = Config(test_dsn, schema=config.schema)
        with newer.connection() as conn:
            JobDefinition(
                newer, name="job", job_function=lambda p: None, release_interval_ms=1_000
            ).upsert(conn)
        newer.close()
        assert db.execute(f'SELECT limited FROM "{config.schema}".job').fetchone() == (True,)


class TestMaxConcurrency:
    def test_max_concurrency_holds_across_workers(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """No more than max_concurrency jobs of a definition run at once, fleet-wide."""
        lock = threading.Lock()
        state = {"now": 0, "peak": 0}

        def job(payload: dict[str, Any]) -> None:
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.05)  # the job's own work, not synchronisation
            with lock:
                state["now"] -= 1

        JobDefinition(config, name="capped", job_function=job, max_concurrency=2).defer_many(
            [{} for _ in range(12)]
        )
        with workers(config, recorder, count=2, concurrency=4):
            recorder.wait_for(events.WorkerJobSucceeded, count=12, timeout=30)
        assert state["peak"] == 2
