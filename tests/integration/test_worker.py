"""The Worker against a real PostgreSQL: claiming, running, retrying, events, stopping."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
import pytest

from orchestra import Backoff, Config, JobContext, JobDefinition, Worker, events
from orchestra.testing import EventRecorder, wait_until
from tests._finished_jobs import finish_by_sql
from tests._running import running


@attrs.frozen
class Item:
    """A typed payload."""

    n: int


def status_of(db: psycopg.Connection[Any], config: Config, job_id: int) -> str:
    """The status of a job, read on a separate connection."""
    row = db.execute(
        f'SELECT status::text FROM "{config.schema}".all_jobs WHERE id = %s', [job_id]
    ).fetchone()
    assert row is not None
    return str(row[0])


def make(
    config: Config, name: str, function: Callable[..., Any], **kwargs: Any
) -> JobDefinition[Any]:
    """A definition with short leases suitable for tests."""
    kwargs.setdefault("lock_interval_ms", 5_000)
    return JobDefinition(config, name=name, job_function=function, **kwargs)


class TestRunning:
    def test_success_stores_result_and_finalizes(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A job whose function returns is finalized as succeeded with its return value."""
        double = make(config, "double", lambda item: {"double": item.n * 2}, payload_type=Item)
        handle = double.defer(Item(21))
        with running(Worker(config, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded)
        row = db.execute(
            f'SELECT status::text, result, attempt, finalized_at IS NOT NULL, lock_token FROM "{config.schema}".all_jobs WHERE id = %s',
            [handle.id],
        ).fetchone()
        assert row == ("succeeded", {"double": 42}, 1, True, None)

    def test_async_and_sync_functions_both_run(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """``async def`` job functions run on the loop, ``def`` ones in the thread pool."""
        threads: dict[str, str] = {}

        async def on_loop(payload: dict[str, Any]) -> str:
            await asyncio.sleep(0)
            threads["async"] = threading.current_thread().name
            return "a"

        def in_pool(payload: dict[str, Any]) -> str:
            threads["sync"] = threading.current_thread().name
            return "s"

        make(config, "on-loop", on_loop).defer({})
        make(config, "in-pool", in_pool).defer({})
        with running(Worker(config, concurrency=2, event_handler=recorder, name="mixed")):
            recorder.wait_for(events.WorkerJobSucceeded, count=2)
        assert threads["sync"].startswith("orchestra-mixed")
        assert threads["async"] != threads["sync"]

    def test_context_gives_job_id_attempt_and_stop_flag(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """JobContext carries the job id and attempt, and ``should_stop`` turns True on stop()."""
        seen: dict[str, Any] = {}
        release = threading.Event()

        def job(payload: dict[str, Any], ctx: JobContext) -> None:
            seen["id"], seen["attempt"], seen["before"] = ctx.job_id, ctx.attempt, ctx.should_stop
            release.wait(10)
            seen["after"] = ctx.should_stop

        handle = make(config, "ctx", job).defer({})
        worker = Worker(config, event_handler=recorder)
        worker.start()
        recorder.wait_for(events.WorkerJobClaimed)
        wait_until(lambda: "before" in seen)
        worker.stop()
        release.set()
        worker.join(timeout=10)
        assert seen == {"id": handle.id, "attempt": 1, "before": False, "after": True}

    def test_worker_only_claims_its_channel(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A worker dequeues only jobs whose channel is its own."""
        mine = make(config, "mine", lambda p: None, channel="alpha").defer({})
        theirs = make(config, "theirs", lambda p: None, channel="beta").defer({})
        with running(
            Worker(config, channel="alpha", event_handler=recorder, process_interval_ms=50)
        ) as worker:
            recorder.wait_for(events.WorkerJobSucceeded)
            wait_until(lambda: worker.stats.claim_queries >= 3)
        assert status_of(db, config, mine.id) == "succeeded"
        assert status_of(db, config, theirs.id) == "available"

    def test_finalized_job_is_never_claimed(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A finalized job is never dequeued again."""
        handle = make(config, "done", lambda p: None).defer({})
        finish_by_sql(db, config, handle.id, "cancelled")
        with running(Worker(config, process_interval_ms=50)) as worker:
            wait_until(lambda: worker.stats.claim_queries >= 3)
            assert worker.stats.claimed == 0

    def test_return_value_that_is_not_json_fails_the_attempt(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """A return value that cannot be stored as JSON fails the attempt, visibly."""
        make(config, "bad-result", lambda p: object()).defer({})
        with running(Worker(config, event_handler=recorder)):
            failed = recorder.wait_for(events.WorkerJobFailed)[0]
        assert "PayloadError" in failed.error and "not JSON-serializable" in failed.error
        assert failed.will_retry is False

    def test_error_with_nul_byte_and_huge_message_is_stored_bounded(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """An exception message with a NUL byte and a megabyte of text is recorded, cut to size."""

        def nasty(payload: dict[str, Any]) -> None:
            raise RuntimeError("bad\x00byte " + "x" * 1_000_000)

        ok = make(config, "fine", lambda p: "ok")
        handle = make(config, "nasty", nasty).defer({})
        fine = ok.defer({})
        with running(Worker(config, concurrency=2, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobFailed)
            recorder.wait_for(events.WorkerJobSucceeded)
        row = db.execute(
            f'SELECT length(error), length(traceback), strpos(error, %s) = 1 FROM "{config.schema}".all_job_attempts WHERE job_id = %s',
            ["RuntimeError: bad\\x00byte", handle.id],
        ).fetchone()
        assert row is not None
        assert row[0] <= 4_100 and row[1] <= 32_100 and row[2]
        assert status_of(db, config, fine.id) == "succeeded"

    def test_oversized_return_value_fails_the_attempt(
        self, config: Config, test_dsn: str, recorder: EventRecorder
    ) -> None:
        """A return value over max_payload_bytes is refused like an oversized payload."""
        small = Config(test_dsn, schema=config.schema, max_payload_bytes=1_000)
        make(small, "big-result", lambda p: "y" * 5_000).defer({})
        with running(Worker(small, event_handler=recorder)):
            failed = recorder.wait_for(events.WorkerJobFailed)[0]
        small.close()
        assert "over the limit of 1000 bytes" in failed.error


class TestClaiming:
    def test_priority_then_fifo(self, config: Config) -> None:
        """Higher priority runs first and ties run in id order."""
        order: list[int] = []
        definition = make(config, "ordered", lambda item: order.append(item.n), payload_type=Item)
        for n, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -3), (6, 100)]:
            definition.defer(Item(n), priority=priority)
        recorder = EventRecorder()
        with running(Worker(config, concurrency=1, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, count=6)
        assert order == [6, 2, 4, 1, 3, 5]

    def test_concurrency_bound(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A worker with concurrency k never runs more than k jobs, nor holds more than k claims."""
        lock = threading.Lock()
        state = {"now": 0, "peak": 0, "db_peak": 0}
        count_running = (
            f"SELECT count(*) FROM \"{config.schema}\".all_jobs WHERE status = 'running'"
        )

        def job(item: Item) -> None:
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            with psycopg.connect(config.dsn, autocommit=True) as conn:
                row = conn.execute(count_running).fetchone()
                assert row is not None
                with lock:
                    state["db_peak"] = max(state["db_peak"], int(row[0]))
            time.sleep(0.02)  # the job's own work, not synchronisation
            with lock:
                state["now"] -= 1

        make(config, "bounded", job, payload_type=Item).defer_many([Item(i) for i in range(24)])
        with running(Worker(config, concurrency=3, event_handler=recorder)) as worker:
            recorder.wait_for(events.WorkerJobSucceeded, count=24, timeout=30)
        assert state["peak"] == 3
        assert state["db_peak"] <= 3
        assert worker.stats.max_running <= 3

    def test_claims_back_to_back_while_work_exists(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """With work available the worker claims again at once, not after process_interval_ms."""
        make(config, "quick", lambda item: None, payload_type=Item).defer_many(
            [Item(i) for i in range(40)]
        )
        worker = Worker(
            config,
            concurrency=2,
            event_handler=recorder,
            listen_notify=False,
            process_interval_ms=60_000,
        )
        with running(worker):
            # 20 batches of 2: waiting a poll interval between batches would take 20 minutes.
            recorder.wait_for(events.WorkerJobSucceeded, count=40, timeout=20)

    def test_idle_worker_polls_at_its_interval(self, config: Config) -> None:
        """An idle worker without NOTIFY polls about once per process_interval_ms, not in a busy loop."""
        worker = Worker(config, listen_notify=False, process_interval_ms=100)
        with running(worker):
            started = time.monotonic()
            wait_until(lambda: worker.stats.claim_queries >= 6)
            elapsed = time.monotonic() - started
        assert elapsed >= 0.4  # 5 further polls cannot happen in less than 5 intervals

    def test_notify_wakes_an_idle_worker(self, config: Config, recorder: EventRecorder) -> None:
        """A defer wakes an idle worker through LISTEN/NOTIFY long before its polling interval."""
        definition = make(config, "wake", lambda p: None)
        worker = Worker(config, event_handler=recorder, process_interval_ms=120_000)
        with running(worker):
            assert worker._listener is not None
            wait_until(lambda: worker._listener is not None and worker._listener.connected.is_set())
            polls = worker.stats.claim_queries
            definition.defer({})
            recorder.wait_for(events.WorkerJobSucceeded, timeout=20)
            assert worker.stats.claim_queries <= polls + 2

    def test_lost_listen_connection_is_restored_and_caught_up(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """After the LISTEN connection dies, the worker reconnects, re-listens and catches up."""
        definition = make(config, "catch-up", lambda p: None)
        worker = Worker(config, event_handler=recorder, process_interval_ms=120_000)
        with running(worker):
            listener = worker._listener
            assert listener is not None
            wait_until(lambda: listener.backend_pid is not None and listener.connected.is_set())
            pid = listener.backend_pid
            db.execute("SELECT pg_terminate_backend(%s)", [pid])
            recorder.wait_for(events.WorkerListenLost)
            definition.defer({})  # enqueued while nobody listens: only the catch-up finds it
            recorder.wait_for(events.WorkerListenRestored, timeout=20)
            recorder.wait_for(events.WorkerJobSucceeded, timeout=20)


class TestRetries:
    def test_failing_job_runs_num_attempts_times_then_fails(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A job that always raises runs exactly num_attempts times, then is finalized as failed."""
        calls: list[int] = []

        def boom(payload: dict[str, Any], ctx: JobContext) -> None:
            calls.append(ctx.attempt)
            raise ValueError(f"nope {ctx.attempt}")

        handle = make(config, "boom", boom, num_attempts=3, backoff="none").defer({})
        with running(Worker(config, event_handler=recorder)):
            failures = recorder.wait_for(events.WorkerJobFailed, count=3)
        assert calls == [1, 2, 3]
        assert [f.will_retry for f in failures] == [True, True, False]
        assert failures[-1].retry_at is None and failures[0].retry_at is not None
        assert failures[0].error == "ValueError: nope 1"
        row = db.execute(
            f'SELECT status::text, attempt, finalized_at IS NOT NULL, last_error FROM "{config.schema}".all_jobs WHERE id = %s',
            [handle.id],
        ).fetchone()
        assert row == ("failed", 3, True, "ValueError: nope 3")
        attempts = db.execute(
            f"SELECT attempt, outcome, error, traceback, worker_name, finished_at >= started_at "
            f'FROM "{config.schema}".all_job_attempts WHERE job_id = %s ORDER BY attempt',
            [handle.id],
        ).fetchall()
        assert [(a[0], a[1], a[2]) for a in attempts] == [
            (1, "failed", "ValueError: nope 1"),
            (2, "failed", "ValueError: nope 2"),
            (3, "failed", "ValueError: nope 3"),
        ]
        assert all("Traceback" in a[3] and "boom" in a[3] for a in attempts)
        assert all(a[4] == "anon-worker" and a[5] for a in attempts)

    def test_success_after_failure_logs_both_attempts(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Every attempt writes an attempt-log row with its outcome."""

        def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
            if ctx.attempt == 1:
                raise RuntimeError("first")
            return "second"

        handle = make(config, "flaky", flaky, num_attempts=2, backoff="none").defer({})
        with running(Worker(config, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded)
        rows = db.execute(
            f'SELECT attempt, outcome, error FROM "{config.schema}".all_job_attempts WHERE job_id = %s ORDER BY id',
            [handle.id],
        ).fetchall()
        assert rows == [(1, "failed", "RuntimeError: first"), (2, "succeeded", None)]

    def test_exponential_backoff_waits_at_least_two_to_the_k_seconds(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """After the k-th failure the retry is scheduled no earlier than 2^k s later, plus bounded jitter."""

        def boom(payload: dict[str, Any]) -> None:
            raise RuntimeError("x")

        handle = make(config, "expo", boom, num_attempts=3, backoff="exponential").defer({})
        with running(Worker(config, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobFailed)
        row = db.execute(
            f'SELECT extract(epoch FROM j.run_at - a.finished_at) FROM "{config.schema}".all_jobs j '
            f'JOIN "{config.schema}".all_job_attempts a ON a.job_id = j.id WHERE j.id = %s',
            [handle.id],
        ).fetchone()
        assert row is not None
        assert 2.0 <= float(row[0]) <= 2.0 * 1.1 + 0.05
        assert status_of(db, config, handle.id) == "available"

    def test_fixed_backoff_delays_the_retry(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Fixed backoff puts the retry the fixed delay after the failure (database clock)."""

        def boom(payload: dict[str, Any]) -> None:
            raise RuntimeError("x")

        handle = make(
            config, "fixed", boom, num_attempts=2, backoff=Backoff.fixed(3_000, jitter=0)
        ).defer({})
        with running(Worker(config, event_handler=recorder)):
            failed = recorder.wait_for(events.WorkerJobFailed)[0]
        assert failed.will_retry and failed.retry_at is not None
        row = db.execute(
            f'SELECT extract(epoch FROM j.run_at - a.finished_at) FROM "{config.schema}".all_jobs j '
            f'JOIN "{config.schema}".all_job_attempts a ON a.job_id = j.id WHERE j.id = %s',
            [handle.id],
        ).fetchone()
        assert row is not None
        assert 3.0 <= float(row[0]) <= 3.05

    def test_payload_that_no_longer_fits_fails_the_attempt_without_calling(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A stored payload that does not structure fails the attempt; the function is not called."""
        called: list[Any] = []
        definition = make(
            config, "typed", called.append, payload_type=Item, num_attempts=2, backoff="none"
        )
        definition.defer(Item(1))
        db.execute(f'UPDATE "{config.schema}".job SET payload = \'{{"n": "many"}}\'')
        with running(Worker(config, event_handler=recorder)) as worker:
            invalid = recorder.wait_for(events.WorkerJobPayloadInvalid, count=2)
            assert worker.stats.failed == 2
        assert called == []
        assert "PayloadError" in invalid[0].error and invalid[0].will_retry
        assert not invalid[1].will_retry


class TestUnknownDefinition:
    def test_job_of_unknown_definition_is_released_not_destroyed(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A job whose definition this worker lacks goes back to available, its attempt refunded, and no attempt is logged."""
        producer = Config(test_dsn, schema=config.schema)
        ghost: JobDefinition[Any] = JobDefinition(
            producer, name="ghost", job_function=lambda p: None
        )
        handle = ghost.defer({})
        with running(Worker(config, event_handler=recorder, unknown_definition_delay_ms=60_000)):
            released = recorder.wait_for(events.WorkerJobReleased)[0]
        producer.close()
        assert released.reason == "unknown_definition" and released.job_id == handle.id
        row = db.execute(
            f"SELECT status::text, attempt, run_at > now() + interval '50 seconds' FROM \"{config.schema}\".all_jobs WHERE id = %s",
            [handle.id],
        ).fetchone()
        assert row == ("available", 0, True)
        assert db.execute(
            f'SELECT count(*) FROM "{config.schema}".all_job_attempts'
        ).fetchone() == (0,)


class TestLeases:
    def test_heartbeat_extends_the_lease_of_a_long_job(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """While a job runs past its lock interval, heartbeats keep its lease alive and rescue finds nothing."""
        release = threading.Event()
        handle = make(config, "long", lambda p: release.wait(20), lock_interval_ms=600).defer({})
        query = f'SELECT locked_until FROM "{config.schema}".all_jobs WHERE id = %s'
        with running(Worker(config, event_handler=recorder)) as worker:
            assert worker.heartbeat_interval_ms == 200
            recorder.wait_for(events.WorkerJobClaimed)
            first = db.execute(query, [handle.id]).fetchone()
            assert first is not None
            wait_until(
                lambda: (
                    (row := db.execute(query, [handle.id]).fetchone())
                    and row[0]
                    and row[0] > first[0] + dt.timedelta(milliseconds=900)
                ),
                timeout=10,
            )
            rescued = db.execute(
                config.queries["job_rescue_expired"],
                {"now": None, "limit": 10, "notify_channel": config.notify_channel},
            ).fetchall()
            assert rescued == []
            release.set()
            recorder.wait_for(events.WorkerJobSucceeded)
        assert status_of(db, config, handle.id) == "succeeded"

    def test_finish_of_a_rescued_attempt_is_fenced(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A job rescued while its attempt runs keeps its new state: the late finish is refused (fence)."""
        release = threading.Event()
        handle = make(config, "fenced", lambda p: release.wait(20), num_attempts=3).defer({})
        with running(Worker(config, event_handler=recorder, heartbeat_interval_ms=60_000)):
            recorder.wait_for(events.WorkerJobClaimed)
            future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            rescued = db.execute(
                config.queries["job_rescue_expired"],
                {"now": future, "limit": 10, "notify_channel": config.notify_channel},
            ).fetchall()
            assert [r[0] for r in rescued] == [handle.id]
            db.execute(
                f"UPDATE \"{config.schema}\".job SET run_at = now() + interval '1 hour' WHERE id = %s",
                [handle.id],
            )
            release.set()
            fenced = recorder.wait_for(events.WorkerJobFenced)[0]
        assert fenced.job_id == handle.id and fenced.outcome == "succeeded"
        row = db.execute(
            f'SELECT status::text, attempt, result FROM "{config.schema}".all_jobs WHERE id = %s',
            [handle.id],
        ).fetchone()
        assert row == ("available", 1, None)
        outcomes = db.execute(
            f'SELECT outcome FROM "{config.schema}".all_job_attempts WHERE job_id = %s', [handle.id]
        ).fetchall()
        assert outcomes == [("lost",)]


class TestEvents:
    def test_events_of_a_job_life_in_order(self, config: Config, recorder: EventRecorder) -> None:
        """A daemon emits start, job and stop events in order, with the envelope filled."""

        def twice(payload: dict[str, Any], ctx: JobContext) -> None:
            if ctx.attempt == 1:
                raise RuntimeError("once")

        handle = make(config, "life", twice, num_attempts=2, backoff="none").defer({})
        worker = Worker(config, event_handler=recorder, name="life")
        with running(worker):
            recorder.wait_for(events.WorkerJobSucceeded)
        kinds = [type(e).__name__ for e in recorder.events]
        assert kinds == [
            "DaemonStarted",
            "WorkerJobClaimed",
            "WorkerJobFailed",
            "WorkerJobClaimed",
            "WorkerJobSucceeded",
            "DaemonStopRequested",
            "DaemonStopped",
        ]
        assert all(e.daemon_name == "life-worker" and e.role == "worker" for e in recorder.events)
        assert len({e.daemon_id for e in recorder.events}) == 1
        assert all(e.timestamp.tzinfo is not None for e in recorder.events)
        claimed = recorder.of_type(events.WorkerJobClaimed)
        assert [(c.job_id, c.attempt, c.definition) for c in claimed] == [
            (handle.id, 1, "life"),
            (handle.id, 2, "life"),
        ]
        stopped = recorder.of_type(events.DaemonStopped)[0]
        assert stopped.error is None and stopped.handed_back == 0

    def test_events_are_emitted_after_commit(self, config: Config, test_dsn: str) -> None:
        """When a job event is handled, the state it reports is already visible to other sessions."""
        seen: list[tuple[str, str]] = []

        def handler(event: events.Event) -> None:
            if isinstance(event, events.WorkerJobClaimed | events.WorkerJobSucceeded):
                with psycopg.connect(test_dsn, autocommit=True) as conn:
                    row = conn.execute(
                        f'SELECT status::text FROM "{config.schema}".all_jobs WHERE id = %s',
                        [event.job_id],
                    ).fetchone()
                assert row is not None
                seen.append((type(event).__name__, str(row[0])))

        make(config, "committed", lambda p: None).defer({})
        recorder = EventRecorder()
        with running(Worker(config, event_handler=[handler, recorder])):
            recorder.wait_for(events.WorkerJobSucceeded)
        assert seen == [("WorkerJobClaimed", "running"), ("WorkerJobSucceeded", "succeeded")]

    def test_handler_that_raises_does_not_stop_the_worker(
        self, config: Config, recorder: EventRecorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A handler that raises is logged; the worker and the other handlers carry on."""

        def broken(event: events.Event) -> None:
            raise RuntimeError("handler bug")

        make(config, "resilient", lambda item: None, payload_type=Item).defer_many(
            [Item(i) for i in range(5)]
        )
        with running(Worker(config, event_handler=[broken, recorder])) as worker:
            recorder.wait_for(events.WorkerJobSucceeded, count=5)
        assert worker.stats.succeeded == 5
        assert "handler bug" in caplog.text


class TestLifecycle:
    def test_stop_waits_for_in_flight_jobs(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """After stop, no new job is claimed, running ones finish, then DaemonStopped."""
        release = threading.Event()
        definition = make(config, "slow", lambda item: release.wait(20), payload_type=Item)
        first = definition.defer(Item(1))
        worker = Worker(config, event_handler=recorder)
        worker.start()
        recorder.wait_for(events.WorkerJobClaimed)
        worker.stop()
        later = definition.defer(Item(2))
        assert not worker.join(timeout=0.3)  # still waiting for the running job
        release.set()
        assert worker.join(timeout=10)
        assert status_of(db, config, first.id) == "succeeded"
        assert status_of(db, config, later.id) == "available"
        kinds = [type(e).__name__ for e in recorder.events]
        assert kinds.index("DaemonStopRequested") < kinds.index("WorkerJobSucceeded")
        assert kinds[-1] == "DaemonStopped"
        assert kinds.count("WorkerJobClaimed") == 1
        assert db.execute(f'SELECT count(*) FROM "{config.schema}".worker').fetchone() == (0,)

    def test_grace_period_exceeded_interrupts_and_retries(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A job still running after the grace period is recorded as interrupted and will run again."""

        async def stuck(payload: dict[str, Any]) -> None:
            await asyncio.sleep(3600)  # cancelled by the worker when the grace period ends

        handle = make(config, "stuck", stuck, num_attempts=2).defer({})
        worker = Worker(config, event_handler=recorder, shutdown_grace_ms=200)
        worker.start()
        recorder.wait_for(events.WorkerJobClaimed)
        worker.stop()
        assert worker.join(timeout=10)
        row = db.execute(
            f'SELECT status::text, attempt FROM "{config.schema}".all_jobs WHERE id = %s',
            [handle.id],
        ).fetchone()
        assert row == ("available", 1)
        outcome = db.execute(
            f'SELECT outcome FROM "{config.schema}".all_job_attempts WHERE job_id = %s', [handle.id]
        ).fetchone()
        assert outcome == ("interrupted",)
        assert recorder.of_type(events.DaemonStopped)[0].handed_back == 1

    def test_async_run_and_stop(self, config: Config) -> None:
        """run_async works on the caller's loop and returns after stop()."""
        recorder = EventRecorder()
        make(config, "in-loop", lambda p: None).defer({})

        async def main() -> None:
            succeeded = asyncio.Event()

            def on_event(event: events.Event) -> None:
                if isinstance(event, events.WorkerJobSucceeded):
                    succeeded.set()  # handlers run on the worker's loop, which is this one

            worker = Worker(config, event_handler=[recorder, on_event])
            task = worker.start_async()
            await succeeded.wait()
            worker.stop()
            await worker.join_async()
            assert task.done()

        asyncio.run(asyncio.wait_for(main(), 20))
        assert [type(e).__name__ for e in recorder.events][-1] == "DaemonStopped"

    def test_dependent_starts_when_its_dependency_succeeds(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A job waits for its dependency and is released by the dependency's own finish."""
        order: list[str] = []
        a = make(config, "a", lambda p: order.append("a"))
        b = make(config, "b", lambda p: order.append("b"))
        c = make(config, "c", lambda p: order.append("c"))
        first = a.defer({})
        second = b.defer({})
        third = c.defer({}, depends_on=[first, second])
        assert status_of(db, config, third.id) == "waiting"
        with running(Worker(config, concurrency=3, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, count=3)
        assert order[-1] == "c" and sorted(order[:2]) == ["a", "b"]


class TestDefinitionHeartbeat:
    def test_worker_heartbeats_the_definitions_it_carries(
        self, config: Config, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A running worker keeps last_heartbeat_at of its definitions fresh, so they are not swept."""
        from orchestra._worker import _heartbeat

        monkeypatch.setattr(_heartbeat, "DEFINITION_HEARTBEAT_S", 0.05)
        make(config, "carried", lambda p: None)
        query = f"SELECT last_heartbeat_at FROM \"{config.schema}\".job_definition WHERE name = 'carried'"
        with running(Worker(config, heartbeat_interval_ms=50)):
            wait_until(lambda: db.execute(query).fetchone() is not None)
            first = db.execute(query).fetchone()
            wait_until(lambda: db.execute(query).fetchone() != first, timeout=10)


class TestDependencyRace:
    def test_dependent_deferred_while_its_dependency_finishes_is_never_stranded(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """Deferring B right as its dependency A finishes still releases B, with no orchestrator."""
        step = make(config, "step", lambda p: None)
        with running(Worker(config, concurrency=8, event_handler=recorder)):
            for _ in range(150):
                first = step.defer({})
                step.defer({}, depends_on=[first])
            recorder.wait_for(events.WorkerJobSucceeded, count=300, timeout=30)

    def test_worker_whose_row_was_removed_registers_again(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A worker reaped while alive (say, paused past the threshold) registers a new row at its next heartbeat."""
        with running(Worker(config, heartbeat_interval_ms=50)) as worker:
            wait_until(lambda: worker.worker_id is not None)
            first = worker.worker_id
            db.execute(f'DELETE FROM "{config.schema}".worker')
            wait_until(lambda: worker.worker_id != first, timeout=10)
            rows = db.execute(f'SELECT id FROM "{config.schema}".worker').fetchall()
            assert rows == [(worker.worker_id,)]

    def test_diamond_runs_each_join_after_both_branches(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """In a diamond A -> (B, C) -> D, B and C start after A, and D after both."""
        order: list[str] = []
        step = make(config, "diamond", lambda p: order.append(p["name"]))
        a = step.defer({"name": "a"})
        b = step.defer({"name": "b"}, depends_on=[a])
        c = step.defer({"name": "c"}, depends_on=[a])
        step.defer({"name": "d"}, depends_on=[b, c])
        with running(Worker(config, concurrency=4, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded, count=4)
        assert order[0] == "a" and order[-1] == "d" and sorted(order[1:3]) == ["b", "c"]


class TestConnectionLoss:
    def test_finishes_are_retried_after_the_worker_loses_its_connections(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Connections killed while jobs run: the lane's write fails, is retried, and
        every job is recorded once, on its first attempt (fenced finish, decision 0015)."""
        release = threading.Event()
        blocked = make(config, "blocked", lambda p: release.wait(30))
        handles = [blocked.defer({}) for _ in range(4)]
        worker = Worker(config, concurrency=4, event_handler=recorder, listen_notify=False)
        with running(worker):
            recorder.wait_for(events.WorkerJobClaimed, count=4)
            assert worker._pool is not None
            pids = [conn.info.backend_pid for conn in worker._pool._pool]  # idle in the pool
            assert pids
            db.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
            release.set()
            recorder.wait_for(events.WorkerJobSucceeded, count=4, timeout=30)
        errors = recorder.of_type(events.DaemonDatabaseError)
        assert [e.operation for e in errors][:1] == ["finish"]
        rows = db.execute(
            f'SELECT job_id, attempt, outcome FROM "{config.schema}".all_job_attempts ORDER BY job_id'
        ).fetchall()
        assert rows == [(h.id, 1, "succeeded") for h in handles]
