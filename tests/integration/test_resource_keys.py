"""Resource keys against a real PostgreSQL: at most one running job per key.

A job deferred with ``resource_key=`` is claimed only when it heads its key
(higher priority first, then in id order) and no job of that key runs; a job held back spends
no attempt and is never failed. Two claims racing on one key from different
channels are refused by the unique index ``job_resource_running_uniq``, and
the worker claims again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from orchestra import Config, ConfigurationError, JobDefinition, JobHandle, Worker, events
from orchestra._checks import KEY_MAX_LENGTH
from orchestra.testing import EventRecorder, wait_until
from tests._running import running
from tests._worker_sql import claim as claim_rows
from tests._worker_sql import finish


class Tracker:
    """Counts the job functions running at once, per resource key and overall (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.total_now = 0
        self.total_peak = 0
        self.order: list[Any] = []

    @contextlib.contextmanager
    def run(self, key: str, label: Any = None) -> Iterator[None]:
        with self._lock:
            self.now[key] += 1
            self.peak[key] = max(self.peak[key], self.now[key])
            self.total_now += 1
            self.total_peak = max(self.total_peak, self.total_now)
            self.order.append(label)
        try:
            yield
        finally:
            with self._lock:
                self.now[key] -= 1
                self.total_now -= 1


def statuses(db: psycopg.Connection[Any], config: Config, ids: list[int]) -> list[tuple[str, int]]:
    """(status, attempt) of the given jobs, in the order given."""
    rows = {
        r[0]: (str(r[1]), int(r[2]))
        for r in db.execute(
            f'SELECT id, status::text, attempt FROM "{config.schema}".all_jobs WHERE id = ANY(%s)',
            [ids],
        ).fetchall()
    }
    return [rows[i] for i in ids]


def overlapping_attempts(db: psycopg.Connection[Any], config: Config) -> list[tuple[Any, ...]]:
    """Pairs of attempts of different jobs with the same resource key whose intervals overlap."""
    s = f'"{config.schema}"'
    return db.execute(
        f"SELECT a.job_id, b.job_id, ja.resource_key FROM {s}.all_job_attempts a "
        f"JOIN {s}.all_jobs ja ON ja.id = a.job_id "
        f"JOIN {s}.all_job_attempts b ON b.job_id <> a.job_id "
        f"JOIN {s}.all_jobs jb ON jb.id = b.job_id AND jb.resource_key = ja.resource_key "
        "WHERE a.started_at < b.finished_at AND b.started_at < a.finished_at"
    ).fetchall()


def stays(condition: Callable[[], bool], seconds: float) -> bool:
    """Watch ``condition`` for ``seconds``; False as soon as it is seen false."""
    try:
        wait_until(lambda: not condition(), timeout=seconds, interval=0.05)
    except TimeoutError:
        return True
    return False


def lock_waiters(db: psycopg.Connection[Any], config: Config) -> int:
    """Sessions blocked on a heavyweight lock while running a statement on this schema."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND position(%s IN query) > 0",
        [config.schema],
    ).fetchone()
    assert row is not None
    return int(row[0])


def claim(
    conn: psycopg.Connection[Any], config: Config, channel: str, worker_id: int = 1
) -> list[tuple[Any, ...]]:
    """Run the worker's claim statement for ``channel``."""
    return claim_rows(conn, config, channel=channel, limit=10, worker_id=worker_id)


def finish_succeeded(
    conn: psycopg.Connection[Any], config: Config, claimed: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    """Record the success of a claimed attempt through the worker's fenced statement."""
    return finish(conn, config, claimed, "succeeded", "null")


class TestExclusion:
    JOBS = 60
    KEYS = 3
    WORKERS = 3

    def test_jobs_sharing_a_key_never_overlap_across_workers(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """Three workers (own Config each, concurrency 4) over 60 jobs on 3 keys: no two jobs of a key overlap, each runs once."""
        tracker = Tracker()

        def work(payload: dict[str, Any]) -> None:
            with tracker.run(payload["key"], payload["n"]):
                time.sleep(0.005)  # the job's own work, not synchronisation

        configs = [Config(test_dsn, schema=config.schema) for _ in range(self.WORKERS)]
        for own in configs:
            JobDefinition(own, name="keyed", job_function=work, lock_interval_ms=5_000)
        producer = JobDefinition(config, name="keyed", job_function=work)
        handles = [
            producer.defer(
                {"n": n, "key": f"res-{n % self.KEYS}"}, resource_key=f"res-{n % self.KEYS}"
            )
            for n in range(self.JOBS)
        ]
        workers = [
            Worker(own, concurrency=4, name=f"w{i}", process_interval_ms=200)
            for i, own in enumerate(configs)
        ]
        try:
            with running(*workers):
                wait_until(
                    lambda: (
                        statuses(db, config, [h.id for h in handles])
                        == [("succeeded", 1)] * self.JOBS
                    ),
                    timeout=60,
                    message="not every keyed job succeeded with one attempt",
                )
        finally:
            for own in configs:
                own.close()

        assert set(tracker.peak) == {f"res-{k}" for k in range(self.KEYS)}
        assert max(tracker.peak.values()) == 1, tracker.peak
        assert tracker.total_peak >= 2  # different keys did run side by side
        assert sorted(tracker.order) == list(range(self.JOBS))  # each ran exactly once
        assert overlapping_attempts(db, config) == []
        attempts = db.execute(
            f'SELECT attempt, outcome, count(*) FROM "{config.schema}".all_job_attempts GROUP BY 1, 2'
        ).fetchall()
        assert attempts == [(1, "succeeded", self.JOBS)]  # nobody failed or spent an attempt
        assert sum(w.stats.claimed for w in workers) == self.JOBS

    def test_jobs_with_different_keys_run_at_the_same_time(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Two jobs with different keys are both running at once (each waits at a barrier for the other)."""
        barrier = threading.Barrier(2, timeout=10)
        met: list[str] = []

        def meet(payload: dict[str, Any]) -> None:
            barrier.wait()  # raises BrokenBarrierError unless the other job runs meanwhile
            met.append(payload["key"])

        definition = JobDefinition(config, name="meet", job_function=meet)
        a = definition.defer({"key": "a"}, resource_key="a")
        b = definition.defer({"key": "b"}, resource_key="b")
        with running(Worker(config, concurrency=2, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, count=2, timeout=20)
        assert sorted(met) == ["a", "b"]
        assert statuses(db, config, [a.id, b.id]) == [("succeeded", 1)] * 2
        assert recorder.of_type(events.WorkerJobFailed) == []

    def test_blocked_job_spends_nothing_and_the_worker_does_not_spin(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """While a long job holds its key, the next job of that key stays available (attempt 0) and the idle worker issues few claims."""
        started = threading.Event()
        release = threading.Event()
        window: dict[str, float] = {}
        worker = Worker(config, concurrency=4, event_handler=recorder, process_interval_ms=1_000)

        def hold(payload: dict[str, Any]) -> None:
            window["t0"], window["c0"] = time.monotonic(), worker.stats.claim_queries
            started.set()
            release.wait(20)
            window["t1"], window["c1"] = time.monotonic(), worker.stats.claim_queries

        tracker = Tracker()

        def after(payload: dict[str, Any]) -> None:
            with tracker.run("k", payload["n"]):
                pass

        long_job = JobDefinition(config, name="hold", job_function=hold).defer({}, resource_key="k")
        blocked = JobDefinition(config, name="after", job_function=after)
        first = blocked.defer({"n": 1}, resource_key="k")
        with running(worker):
            assert started.wait(20)
            second = blocked.defer({"n": 2}, resource_key="k")  # a NOTIFY: one more claim
            # ~0.6 s of wall time during which the blocked jobs must stay untouched.
            assert stays(
                lambda: statuses(db, config, [first.id, second.id]) == [("available", 0)] * 2,
                0.6,
            ), "a job blocked by its resource key was claimed or changed"
            release.set()
            recorder.wait_for(events.WorkerJobSucceeded, count=3, timeout=20)

        assert window["t1"] - window["t0"] >= 0.5  # the window really was that long
        assert window["c1"] - window["c0"] < 20, window  # no busy loop on the held key
        assert tracker.order == [1, 2]
        assert statuses(db, config, [long_job.id, first.id, second.id]) == [("succeeded", 1)] * 3
        assert overlapping_attempts(db, config) == []
        assert recorder.of_type(events.WorkerJobFailed) == []

    def test_keyed_jobs_do_not_block_plain_jobs_of_the_channel(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """With a key held, its blocked jobs take no slot: plain jobs of the channel run through the free slot meanwhile."""
        started = threading.Event()
        release = threading.Event()

        def hold(payload: dict[str, Any]) -> None:
            started.set()
            release.wait(20)

        holder = JobDefinition(config, name="hold", job_function=hold).defer({}, resource_key="k")
        keyed = JobDefinition(config, name="keyed", job_function=lambda p: None)
        waiting = [keyed.defer({"n": n}, resource_key="k").id for n in range(3)]
        plain = JobDefinition(config, name="plain", job_function=lambda p: None)
        worker = Worker(config, concurrency=2, event_handler=recorder, process_interval_ms=100)
        with running(worker):
            assert started.wait(20)
            plain_ids = [h.id for h in plain.defer_many([{"n": n} for n in range(10)])]
            recorder.wait_for(
                events.WorkerJobSucceeded, lambda e: e.definition == "plain", count=10, timeout=20
            )
            assert statuses(db, config, waiting) == [("available", 0)] * 3
            assert statuses(db, config, [holder.id]) == [("running", 1)]
            release.set()
            recorder.wait_for(events.WorkerJobSucceeded, count=14, timeout=20)
        assert statuses(db, config, [holder.id, *waiting, *plain_ids]) == [("succeeded", 1)] * 14


class TestOrder:
    def test_priority_then_fifo_within_a_key(self, config: Config, recorder: EventRecorder) -> None:
        """Jobs of one key run one at a time, higher priority first, then in id order."""
        order: list[int] = []
        definition = JobDefinition(
            config, name="ordered", job_function=lambda p: order.append(p["n"])
        )
        for n, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -3), (6, 100)]:
            definition.defer({"n": n}, priority=priority, resource_key="k")
        with running(Worker(config, concurrency=4, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, count=6, timeout=20)
        assert order == [6, 2, 4, 1, 3, 5]

    def test_job_deferred_while_the_key_is_held_jumps_the_queue_by_priority(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """A higher-priority job deferred while the key is busy runs before older lower-priority ones of that key."""
        order: list[str] = []
        started = threading.Event()
        release = threading.Event()

        def job(payload: dict[str, Any]) -> None:
            order.append(payload["name"])
            if payload["name"] == "first":
                started.set()
                release.wait(20)

        definition = JobDefinition(config, name="ordered", job_function=job)
        definition.defer({"name": "first"}, resource_key="k")
        with running(Worker(config, concurrency=4, event_handler=recorder)):
            assert started.wait(20)
            definition.defer({"name": "old-low"}, resource_key="k")
            definition.defer({"name": "new-high"}, resource_key="k", priority=10)
            release.set()
            recorder.wait_for(events.WorkerJobSucceeded, count=3, timeout=20)
        assert order == ["first", "new-high", "old-low"]


class TestDeferring:
    def test_defer_many_with_a_resource_key_runs_one_at_a_time_in_order(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """defer_many(resource_key=...) keys every job; they run one at a time, FIFO."""
        tracker = Tracker()

        def work(payload: dict[str, Any]) -> None:
            with tracker.run("batch", payload["n"]):
                time.sleep(0.005)  # the job's own work, not synchronisation

        definition = JobDefinition(config, name="batch", job_function=work)
        handles = definition.defer_many([{"n": n} for n in range(6)], resource_key="batch")

        async def deferring() -> list[JobHandle]:
            try:
                return await definition.defer_many_async(
                    [{"n": n} for n in range(6, 8)], resource_key="batch"
                )
            finally:
                await config.close_async()

        handles += asyncio.run(deferring())
        rows = db.execute(
            f'SELECT id, resource_key, limited FROM "{config.schema}".job ORDER BY id'
        ).fetchall()
        assert rows == [(h.id, "batch", True) for h in handles]
        with running(Worker(config, concurrency=4, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, count=8, timeout=20)
        assert tracker.peak["batch"] == 1
        assert tracker.order == list(range(8))
        assert overlapping_attempts(db, config) == []

    @pytest.mark.parametrize(
        "key",
        ["", "k" * (KEY_MAX_LENGTH + 1), 7, b"k", "nul\x00"],
        ids=["empty", "too-long", "int", "bytes", "nul"],
    )
    def test_bad_resource_key_is_refused_naming_it(
        self, config: Config, db: psycopg.Connection[Any], key: Any
    ) -> None:
        """An empty, over-long, non-str or NUL-carrying resource_key raises ConfigurationError naming it; nothing is written."""
        definition = JobDefinition(config, name="bad", job_function=lambda p: None)
        with pytest.raises(ConfigurationError) as info:
            definition.defer({}, resource_key=key)
        assert info.value.argument == "resource_key"
        with pytest.raises(ConfigurationError) as many_info:
            definition.defer_many([{}], resource_key=key)
        assert many_info.value.argument == "resource_key"
        assert db.execute(f'SELECT count(*) FROM "{config.schema}".all_jobs').fetchone() == (0,)

    def test_resource_key_and_unique_key_together(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job can carry both keys; the duplicate returns the holder, the keys are stored."""
        definition = JobDefinition(config, name="both", job_function=lambda p: None)
        a = definition.defer({}, unique_key="u", resource_key="r")
        b = definition.defer({}, unique_key="u", resource_key="other")
        assert (b.id, b.deduplicated) == (a.id, True)
        rows = db.execute(
            f'SELECT unique_key, resource_key FROM "{config.schema}".all_jobs'
        ).fetchall()
        assert rows == [("u", "r")]


class TestLimitedDefinitions:
    def test_key_on_a_max_concurrency_definition_respects_both_limits(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Keyed jobs of a max_concurrency=2 definition over two workers: never 2 of a key, never 3 in all."""
        tracker = Tracker()

        def work(payload: dict[str, Any]) -> None:
            with tracker.run(payload["key"], payload["n"]):
                time.sleep(0.03)  # the job's own work, not synchronisation

        other = Config(test_dsn, schema=config.schema)
        definitions = [
            JobDefinition(own, name="capped", job_function=work, max_concurrency=2)
            for own in (config, other)
        ]
        keys = [f"k{n % 3}" for n in range(12)]
        handles = [
            definitions[0].defer({"n": n, "key": key}, resource_key=key)
            for n, key in enumerate(keys)
        ]
        workers = [
            Worker(
                own, concurrency=4, name=f"w{i}", event_handler=recorder, process_interval_ms=100
            )
            for i, own in enumerate((config, other))
        ]
        try:
            with running(*workers):
                recorder.wait_for(events.WorkerJobSucceeded, count=12, timeout=30)
        finally:
            other.close()
        assert max(tracker.peak.values()) == 1, tracker.peak
        assert tracker.total_peak == 2
        assert statuses(db, config, [h.id for h in handles]) == [("succeeded", 1)] * 12
        assert overlapping_attempts(db, config) == []

    def test_key_on_a_rate_limited_definition_respects_both_limits(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Keyed jobs of a rate-limited definition start >= R apart and never overlap within a key."""
        tracker = Tracker()

        def work(payload: dict[str, Any]) -> None:
            with tracker.run(payload["key"], payload["n"]):
                time.sleep(0.005)  # the job's own work, not synchronisation

        definition = JobDefinition(config, name="paced", job_function=work, release_interval_ms=150)
        for n in range(5):
            definition.defer({"n": n, "key": f"k{n % 2}"}, resource_key=f"k{n % 2}")
        with running(
            Worker(config, concurrency=4, event_handler=recorder, process_interval_ms=100)
        ):
            recorder.wait_for(events.WorkerJobSucceeded, count=5, timeout=30)
        starts = [
            r[0]
            for r in db.execute(
                f'SELECT started_at FROM "{config.schema}".all_job_attempts ORDER BY started_at'
            ).fetchall()
        ]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
        assert len(starts) == 5 and min(gaps) >= 0.15, gaps
        assert max(tracker.peak.values()) == 1
        assert {e.attempt for e in recorder.of_type(events.WorkerJobClaimed)} == {1}


class TestUniqueIndexSafetyNet:
    def _two_channels(self, config: Config) -> tuple[JobHandle, JobHandle]:
        a = JobDefinition(config, name="on-a", job_function=lambda p: None, channel="a")
        b = JobDefinition(config, name="on-b", job_function=lambda p: None, channel="b")
        return a.defer({}, resource_key="shared"), b.defer({}, resource_key="shared")

    def test_second_claim_of_a_key_from_another_channel_is_refused_by_the_index(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """tx1 claims A (channel a); tx2's claim of B (channel b, same key) waits on the unique index, then raises UniqueViolation."""
        job_a, job_b = self._two_channels(config)
        with (
            psycopg.connect(test_dsn, autocommit=True) as tx1,
            psycopg.connect(test_dsn, autocommit=True) as tx2,
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool,
        ):
            tx1.execute("BEGIN")
            claimed_a = claim(tx1, config, "a", worker_id=1)
            assert [r[0] for r in claimed_a] == [job_a.id]

            def second_claim() -> list[tuple[Any, ...]]:
                tx2.execute("BEGIN")
                try:
                    return claim(tx2, config, "b", worker_id=2)
                finally:
                    tx2.execute("ROLLBACK")

            future = pool.submit(second_claim)
            wait_until(
                lambda: lock_waiters(db, config) == 1,
                message="the second claim did not wait on the unique index",
            )
            assert not future.done()
            tx1.execute("COMMIT")
            with pytest.raises(psycopg.errors.UniqueViolation) as info:
                future.result(timeout=10)
            assert info.value.diag.constraint_name == "job_resource_running_uniq"
            # Claiming again, without the offending job, finds nothing to do.
            assert claim(tx2, config, "b", worker_id=2) == []
            assert statuses(db, config, [job_a.id, job_b.id]) == [("running", 1), ("available", 0)]
            # Once A is finished the key is free and B is claimable.
            assert finish_succeeded(tx1, config, claimed_a[0])
            assert [r[0] for r in claim(tx2, config, "b", worker_id=2)] == [job_b.id]

    def test_waiting_claim_succeeds_when_the_rival_rolls_back(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """When the transaction that claimed the key rolls back, the waiting claim of the other channel gets its job."""
        job_a, job_b = self._two_channels(config)
        with (
            psycopg.connect(test_dsn, autocommit=True) as tx1,
            psycopg.connect(test_dsn, autocommit=True) as tx2,
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool,
        ):
            tx1.execute("BEGIN")
            assert [r[0] for r in claim(tx1, config, "a")] == [job_a.id]
            future = pool.submit(claim, tx2, config, "b", 2)
            wait_until(lambda: lock_waiters(db, config) == 1)
            tx1.execute("ROLLBACK")
            assert [r[0] for r in future.result(timeout=10)] == [job_b.id]
        assert statuses(db, config, [job_a.id, job_b.id]) == [("available", 0), ("running", 1)]

    def test_worker_claims_again_after_the_index_refused_its_claim(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A worker whose claim hits the unique index retries at once, reports no error, and runs the job once the key is free."""
        a = JobDefinition(config, name="on-a", job_function=lambda p: None, channel="a")
        b = JobDefinition(config, name="on-b", job_function=lambda p: None, channel="b")
        job_a = a.defer({}, resource_key="shared")
        worker = Worker(
            config, channel="b", event_handler=recorder, process_interval_ms=100, name="b"
        )
        with running(worker), psycopg.connect(test_dsn, autocommit=True) as tx1:
            recorder.wait_for(events.DaemonStarted)
            tx1.execute("BEGIN")
            claimed_a = claim(tx1, config, "a")
            assert [r[0] for r in claimed_a] == [job_a.id]
            job_b = b.defer({}, resource_key="shared")  # NOTIFY: the worker claims B and waits
            wait_until(
                lambda: lock_waiters(db, config) == 1,
                message="the worker's claim did not wait on the unique index",
            )
            before = worker.stats.claim_queries
            tx1.execute("COMMIT")
            # Refused, then claimed again at once: the new snapshot sees A running.
            wait_until(lambda: worker.stats.claim_queries >= before + 1)
            assert stays(lambda: statuses(db, config, [job_b.id]) == [("available", 0)], 0.3), (
                "B was claimed while A held the key"
            )
            assert finish_succeeded(tx1, config, claimed_a[0])
            recorder.wait_for(events.WorkerJobSucceeded, timeout=20)
        assert statuses(db, config, [job_a.id, job_b.id]) == [("succeeded", 1), ("succeeded", 1)]
        assert recorder.of_type(events.DaemonDatabaseError) == []
        assert worker.stats.claimed == 1


class TestWakeUps:
    def test_freed_key_wakes_the_worker_of_another_channel(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """When a job frees its key, an idle worker of another channel holding a job of that key is woken, not left to its poll."""
        started = threading.Event()
        release = threading.Event()

        def hold(payload: Any) -> None:
            started.set()
            release.wait(20)

        a = JobDefinition(config, name="on-a", job_function=hold, channel="a")
        b = JobDefinition(config, name="on-b", job_function=lambda p: None, channel="b")
        worker_a = Worker(config, channel="a", name="a", event_handler=recorder)
        worker_b = Worker(
            config, channel="b", name="b", event_handler=recorder, process_interval_ms=120_000
        )
        job_a = a.defer({}, resource_key="shared")
        with running(worker_a, worker_b):
            assert started.wait(20)
            assert worker_b._listener is not None
            listener = worker_b._listener
            wait_until(listener.connected.is_set)

            def settled() -> int:
                # Worker b's start-up and catch-up claims are over: it now sleeps.
                seen = worker_b.stats.claim_queries
                quiet = stays(lambda: worker_b.stats.claim_queries == seen, 0.3)
                return seen if seen >= 1 and quiet else 0

            before = wait_until(settled)
            job_b = b.defer({}, resource_key="shared")  # wakes worker b, which finds the key busy
            wait_until(lambda: worker_b.stats.claim_queries > before)
            assert statuses(db, config, [job_b.id]) == [("available", 0)]
            release.set()
            recorder.wait_for(events.WorkerJobSucceeded, lambda e: e.definition == "on-a")
            # Far sooner than worker b's two-minute poll.
            recorder.wait_for(
                events.WorkerJobSucceeded, lambda e: e.definition == "on-b", timeout=10
            )
        assert statuses(db, config, [job_a.id, job_b.id]) == [("succeeded", 1)] * 2
