"""Waiting for a job's result against a real PostgreSQL: ``JobHandle.result()``.

The result is the job function's return value, stored in the job's history
row; a waiter LISTENs on the schema's finished channel with a
polling fallback, and raises ``JobFailed`` once the job finally fails or is
cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import psycopg
import pytest

from orchestra import (
    Config,
    ConfigurationError,
    JobContext,
    JobDefinition,
    JobHandle,
    UnknownJobError,
    Worker,
    events,
)
from orchestra._orchestrator._finalizer import Finalizer
from orchestra._orchestrator._rescuer import Rescuer
from orchestra._orchestrator._sweeper import Sweeper
from orchestra.errors import JobFailed, ResultTimeoutError
from orchestra.testing import EventRecorder, wait_until
from tests._finished_jobs import finish_by_sql
from tests._history_partitions import skip_ids_to
from tests._running import running
from tests._worker_sql import claim, finish

#: A poll interval so long that only a notification can end a wait in time.
NO_POLLING_S = 120.0
#: How long a test waits for a waiter that should be woken at once.
WAKE_DEADLINE_S = 15.0


@attrs.frozen
class Receipt:
    """A typed result."""

    order: int
    total: str


@contextlib.contextmanager
def waiting(call: Callable[[], Any]) -> Iterator[concurrent.futures.Future[Any]]:
    """Run ``call`` (a blocking wait) in a thread; the block gets its future."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(call)


def outcome_readers(db: psycopg.Connection[Any], config: Config) -> int:
    """Sessions whose last statement read a job's outcome in this schema.

    A waiter reads once on a pooled connection, then LISTENs on a connection of
    its own and reads again: two such sessions mean it is listening.
    """
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND position('job_history' IN query) > 0 AND position('NULL::jsonb AS result' IN query) > 0 "
        "AND position(%s IN query) > 0",
        [config.schema],
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_listening(db: psycopg.Connection[Any], config: Config, readers: int = 2) -> None:
    """Wait until a result waiter listens on the finished channel."""
    wait_until(
        lambda: outcome_readers(db, config) >= readers,
        message="the result waiter never started listening",
    )


def cancel(db: psycopg.Connection[Any], config: Config, job_id: int, *, notify: bool) -> None:
    """Cancel a job by SQL, as an operator would; optionally tell the waiters."""
    finish_by_sql(db, config, job_id, "cancelled")
    if notify:
        db.execute("SELECT pg_notify(%s, %s::text)", [config.finished_channel, job_id])


def in_an_hour() -> dt.datetime:
    """A time an hour from now, for maintenance passes that move time."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


class TestSuccess:
    def test_result_waits_for_a_worker_started_after_the_call(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """result() called before any worker runs returns the function's JSON return value once a worker ran it."""
        double = JobDefinition(
            config, name="double", job_function=lambda p: {"double": p["n"] * 2, "of": [p]}
        )
        handle = double.defer({"n": 21})
        with waiting(lambda: handle.result(timeout=30, poll_interval_s=NO_POLLING_S)) as future:
            wait_listening(db, config)
            assert not future.done()
            with running(Worker(config, event_handler=recorder)):
                value = future.result(timeout=WAKE_DEADLINE_S)
        assert value == {"double": 42, "of": [{"n": 21}]}
        assert handle.result(timeout=0) == value  # asked again: the same stored value

    def test_attrs_result_with_as_type(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A job returning an attrs instance is read back as that class with as_type=, as JSON without it."""
        checkout = JobDefinition(
            config, name="checkout", job_function=lambda p: Receipt(order=p["order"], total="9.50")
        )
        handle = checkout.defer({"order": 7})
        with waiting(
            lambda: handle.result(timeout=30, as_type=Receipt, poll_interval_s=NO_POLLING_S)
        ) as future:
            wait_listening(db, config)
            with running(Worker(config, event_handler=recorder)):
                typed = future.result(timeout=WAKE_DEADLINE_S)
        assert typed == Receipt(order=7, total="9.50")
        assert handle.result(timeout=0) == {"order": 7, "total": "9.50"}

    @pytest.mark.parametrize(
        "value", [None, 0, "", [], {}, "text", [1, "two", None], 3.5, False], ids=repr
    )
    def test_any_json_return_value_is_the_result(
        self, config: Config, recorder: EventRecorder, value: Any
    ) -> None:
        """Whatever JSON the function returns, None and falsy values included, is the result, not a failure."""
        handle = JobDefinition(config, name="returns", job_function=lambda p: value).defer({})
        with running(Worker(config, event_handler=recorder)):
            recorder.wait_for(events.WorkerJobSucceeded)
        assert handle.result(timeout=5) == value
        assert handle.status() == "succeeded"

    def test_result_async_waits_for_the_worker(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """result_async() started before the worker returns the value; with as_type too."""
        definition = JobDefinition(
            config, name="async-result", job_function=lambda p: {"order": p, "total": "1"}
        )
        first = definition.defer(1)
        second = definition.defer(2)

        async def main() -> tuple[Any, Any]:
            try:
                task = asyncio.create_task(
                    first.result_async(timeout=30, poll_interval_s=NO_POLLING_S)
                )
                await asyncio.to_thread(wait_listening, db, config)
                assert not task.done()
                worker = Worker(config, event_handler=recorder)
                worker.start()
                try:
                    plain = await asyncio.wait_for(task, timeout=WAKE_DEADLINE_S)
                    typed = await second.result_async(
                        timeout=WAKE_DEADLINE_S, as_type=Receipt, poll_interval_s=NO_POLLING_S
                    )
                finally:
                    worker.stop()
                    await asyncio.to_thread(worker.join, 30)
                return plain, typed
            finally:
                await config.close_async()

        plain, typed = asyncio.run(main())
        assert plain == {"order": 1, "total": "1"}
        assert typed == Receipt(order=2, total="1")

    def test_finish_between_first_read_and_listen_is_not_missed(
        self, config: Config, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A job that finishes after the waiter's first read but before its LISTEN is still seen (re-read after LISTEN)."""
        from orchestra import _results

        handle = JobDefinition(config, name="racy", job_function=lambda p: None).defer({})
        real_listen = _results._listen

        def finish_then_listen(cfg: Config) -> Any:
            # The notification goes out while nobody listens yet.
            finish(db, config, claim(db, config)[0], "succeeded", '"early"')
            return real_listen(cfg)

        monkeypatch.setattr(_results, "_listen", finish_then_listen)
        with waiting(lambda: handle.result(timeout=60, poll_interval_s=NO_POLLING_S)) as future:
            assert future.result(timeout=WAKE_DEADLINE_S) == "early"

    def test_many_waiters_of_jobs_finished_together_all_get_their_results(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """Several waiters on several jobs finished by one worker batch each get their own job's value (one notification lists many ids)."""
        definition = JobDefinition(config, name="square", job_function=lambda p: p * p)
        handles = definition.defer_many(list(range(8)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(handles) + 2) as pool:
            futures = [
                pool.submit(h.result, timeout=30, poll_interval_s=NO_POLLING_S) for h in handles
            ]
            # Two waiters on the same job.
            futures.append(pool.submit(handles[3].result, timeout=30, poll_interval_s=NO_POLLING_S))
            with running(Worker(config, concurrency=8, event_handler=recorder)):
                values = [f.result(timeout=WAKE_DEADLINE_S) for f in futures]
        assert values == [n * n for n in range(8)] + [9]

    def test_rebuilt_handle_in_another_config_gets_the_result(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """JobHandle(id, other_config) built in another Config waits for and returns the result, and asks again later."""
        handle = JobDefinition(config, name="echo", job_function=lambda p: {"echo": p}).defer("hi")
        other = Config(test_dsn, schema=config.schema)
        try:
            rebuilt = JobHandle(handle.id, other)
            assert rebuilt == handle
            with waiting(
                lambda: rebuilt.result(timeout=30, poll_interval_s=NO_POLLING_S)
            ) as future:
                wait_listening(db, config)
                with running(Worker(config, event_handler=recorder)):
                    assert future.result(timeout=WAKE_DEADLINE_S) == {"echo": "hi"}
            assert JobHandle(handle.id, other).result(timeout=0) == {"echo": "hi"}
        finally:
            other.close()


class TestFailure:
    def test_final_failure_raises_job_failed_with_the_last_error(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A waiter is not woken by a retried failure; after the last attempt it gets JobFailed(status failed, last error)."""

        def boom(payload: Any, ctx: JobContext) -> None:
            raise ValueError(f"nope {ctx.attempt}")

        handle = JobDefinition(
            config, name="boom", job_function=boom, num_attempts=3, backoff="none"
        ).defer({})
        with waiting(lambda: handle.result(timeout=30, poll_interval_s=NO_POLLING_S)) as future:
            wait_listening(db, config)
            with running(Worker(config, event_handler=recorder)):
                with pytest.raises(JobFailed) as info:
                    future.result(timeout=WAKE_DEADLINE_S)
                # The waiter may be woken before the worker emits its event.
                failures = recorder.wait_for(events.WorkerJobFailed, count=3)
        assert [f.attempt for f in failures] == [1, 2, 3]
        error = info.value
        # Not woken by the two retried failures: the error is the last attempt's.
        assert (error.job_id, error.status, error.error) == (
            handle.id,
            "failed",
            "ValueError: nope 3",
        )
        assert str(handle.id) in str(error) and "nope 3" in str(error)
        with pytest.raises(JobFailed):
            handle.result(timeout=0)  # asked again later: the same verdict

    def test_cancelled_job_wakes_a_waiter_through_the_notification(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job cancelled by SQL plus a notification on the finished channel ends the wait with JobFailed(status cancelled)."""
        handle = JobDefinition(config, name="victim", job_function=lambda p: None).defer({})
        with waiting(lambda: handle.result(timeout=60, poll_interval_s=NO_POLLING_S)) as future:
            wait_listening(db, config)
            cancel(db, config, handle.id, notify=True)
            with pytest.raises(JobFailed) as info:
                future.result(timeout=WAKE_DEADLINE_S)
        assert (info.value.job_id, info.value.status, info.value.error) == (
            handle.id,
            "cancelled",
            None,
        )

    def test_cancelled_job_without_notification_is_found_by_polling(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """When no notification comes, the waiter's polling fallback (poll_interval_s=0.2) still sees the cancellation."""
        handle = JobDefinition(config, name="victim", job_function=lambda p: None).defer({})
        with waiting(lambda: handle.result(timeout=60, poll_interval_s=0.2)) as future:
            wait_listening(db, config)
            cancel(db, config, handle.id, notify=False)
            with pytest.raises(JobFailed) as info:
                future.result(timeout=WAKE_DEADLINE_S)
        assert info.value.status == "cancelled"

    def test_unrelated_notifications_do_not_end_the_wait(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A notification about other jobs neither ends the wait nor raises; the job's own one does."""
        definition = JobDefinition(config, name="victim", job_function=lambda p: None)
        mine, other = definition.defer({}), definition.defer({})
        with waiting(lambda: mine.result(timeout=60, poll_interval_s=NO_POLLING_S)) as future:
            wait_listening(db, config)
            cancel(db, config, other.id, notify=True)
            db.execute("SELECT pg_notify(%s, %s)", [config.finished_channel, f"{other.id}1,x"])
            with pytest.raises(concurrent.futures.TimeoutError):
                future.result(timeout=0.5)
            cancel(db, config, mine.id, notify=True)
            with pytest.raises(JobFailed) as info:
                future.result(timeout=WAKE_DEADLINE_S)
        assert info.value.job_id == mine.id


class TestTimeoutAndUnknown:
    def test_no_worker_raises_result_timeout_error_with_the_status(self, config: Config) -> None:
        """Without a worker the wait ends with ResultTimeoutError (a TimeoutError) carrying the job's status."""
        handle = JobDefinition(config, name="idle", job_function=lambda p: None).defer({})
        with pytest.raises(ResultTimeoutError) as info:
            handle.result(timeout=0.3, poll_interval_s=0.1)
        error = info.value
        assert isinstance(error, TimeoutError)
        assert (error.job_id, error.status, error.timeout_s) == (handle.id, "available", 0.3)
        with pytest.raises(TimeoutError):
            handle.result(timeout=0)
        assert handle.status() == "available"  # the job itself is untouched

    def test_timeout_reports_a_running_or_waiting_status(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """ResultTimeoutError names the status the job had when the wait ended (running, waiting)."""
        definition = JobDefinition(config, name="busy", job_function=lambda p: None)
        first = definition.defer({})
        assert [c[0] for c in claim(db, config)] == [first.id]
        second = definition.defer({}, depends_on=[first])
        with pytest.raises(ResultTimeoutError) as running_info:
            first.result(timeout=0.2)
        with pytest.raises(ResultTimeoutError) as waiting_info:
            second.result(timeout=0)
        assert running_info.value.status == "running"
        assert waiting_info.value.status == "waiting"

    def test_result_async_timeout(self, config: Config) -> None:
        """result_async raises ResultTimeoutError too."""
        handle = JobDefinition(config, name="idle", job_function=lambda p: None).defer({})

        async def main() -> None:
            try:
                await handle.result_async(timeout=0.2, poll_interval_s=0.05)
            finally:
                await config.close_async()

        with pytest.raises(ResultTimeoutError) as info:
            asyncio.run(main())
        assert info.value.status == "available"

    def test_unknown_job_raises_unknown_job_error(self, config: Config) -> None:
        """Waiting for an id that never existed raises UnknownJobError at once, sync and async."""
        with pytest.raises(UnknownJobError) as info:
            JobHandle(987654321, config).result(timeout=30)
        assert info.value.job_ids == (987654321,)

        async def main() -> None:
            try:
                await JobHandle(987654321, config).result_async(timeout=30)
            finally:
                await config.close_async()

        with pytest.raises(UnknownJobError):
            asyncio.run(main())

    @pytest.mark.parametrize(
        ("argument", "value"),
        [
            ("timeout", -1),
            ("timeout", "5"),
            ("timeout", True),
            ("poll_interval_s", 0),
            ("poll_interval_s", -0.5),
            ("poll_interval_s", True),
            ("poll_interval_s", "1"),
        ],
    )
    def test_bad_wait_arguments_raise_configuration_error(
        self, config: Config, argument: str, value: Any
    ) -> None:
        """A bad timeout or poll_interval_s raises ConfigurationError naming it, before any lookup (the id does not exist)."""
        handle = JobHandle(987654321, config)
        kwargs: dict[str, Any] = {argument: value}
        with pytest.raises(ConfigurationError) as info:
            handle.result(**kwargs)
        assert info.value.argument == argument

        async def main() -> None:
            try:
                await handle.result_async(**kwargs)
            finally:
                await config.close_async()

        with pytest.raises(ConfigurationError) as async_info:
            asyncio.run(main())
        assert async_info.value.argument == argument


class TestDurability:
    def sweeper(self, config: Config, *, archive: bool) -> Sweeper:
        """A sweeper with a one-minute threshold (the test moves time by an hour)."""
        return Sweeper(
            config,
            interval_ms=300_000,
            finalized_job_threshold_ms=60_000,
            stale_definition_threshold_ms=3_600_000 * 24,
            archive=archive,
        )

    def test_result_survives_sweeper_passes_while_the_history_keeps_the_job(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """With archive=True (kept for ever) a finished job stays in the history: result() still returns the value, or raises JobFailed."""
        definition = JobDefinition(config, name="archived", job_function=lambda p: None)
        good, bad = definition.defer({"n": 1}), definition.defer({"n": 2})
        claimed = {c[0]: c for c in claim(db, config)}
        finish(db, config, claimed[good.id], "succeeded", '{"value": [1, 2]}')
        finish(db, config, claimed[bad.id], "failed")
        skip_ids_to(db, config, 5_000_000)  # the partition of these ids could be dropped
        result = self.sweeper(config, archive=True).run_once(db, in_an_hour())
        assert result.counts["history_partitions_dropped"] == 0
        assert good.result(timeout=0) == {"value": [1, 2]}
        with pytest.raises(JobFailed) as info:
            bad.result(timeout=0)
        assert (info.value.status, info.value.error) == ("failed", "RuntimeError: boom")

    def test_result_of_a_job_past_the_retention_is_unknown(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Once the history's retention dropped a finished job, result() raises UnknownJobError."""
        handle = JobDefinition(config, name="gone", job_function=lambda p: None).defer({})
        finish(db, config, claim(db, config)[0], "succeeded", '"done"')
        assert handle.result(timeout=0) == "done"
        skip_ids_to(db, config, 5_000_000)
        result = self.sweeper(config, archive=False).run_once(db, in_an_hour())
        assert result.counts["history_jobs_dropped"] == 1
        with pytest.raises(UnknownJobError):
            handle.result(timeout=0)


class TestOrchestratorFinalization:
    def test_timeout_by_the_finalizer_wakes_the_waiter(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job finalized by the orchestrator's finalizer (timeout) wakes its waiter with JobFailed."""
        handle = JobDefinition(
            config, name="slow", job_function=lambda p: None, timeout_interval_ms=1_000
        ).defer({})
        with waiting(lambda: handle.result(timeout=60, poll_interval_s=NO_POLLING_S)) as future:
            wait_listening(db, config)
            result = Finalizer(config, interval_ms=5_000).run_once(db, in_an_hour())
            (finalized,) = result.events
            assert type(finalized) is events.OrchestratorJobFinalized
            assert finalized.reason == "timeout"
            with pytest.raises(JobFailed) as info:
                future.result(timeout=WAKE_DEADLINE_S)
        assert info.value.status == "failed"
        assert (info.value.error or "").startswith("timeout")

    def test_unmet_dependency_cascade_wakes_the_waiter(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A dependent finalized as unmet_dependencies by the finalizer wakes its waiter with JobFailed."""
        definition = JobDefinition(config, name="chain", job_function=lambda p: None)
        first = definition.defer({})
        dependent = definition.defer({}, depends_on=[first])
        finish(db, config, claim(db, config)[0], "failed")
        with pytest.raises(JobFailed):
            first.result(timeout=0)
        with waiting(lambda: dependent.result(timeout=60, poll_interval_s=NO_POLLING_S)) as future:
            wait_listening(db, config)
            Finalizer(config, interval_ms=5_000).run_once(db, None)
            with pytest.raises(JobFailed) as info:
                future.result(timeout=WAKE_DEADLINE_S)
        assert (info.value.error or "").startswith("unmet_dependencies")

    def test_job_failed_by_the_rescuer_wakes_the_waiter(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A running job whose lease expired with no attempt left is failed by the rescuer, which wakes its waiter."""
        handle = JobDefinition(config, name="lost", job_function=lambda p: None).defer({})
        assert [c[0] for c in claim(db, config)] == [handle.id]
        with waiting(lambda: handle.result(timeout=60, poll_interval_s=NO_POLLING_S)) as future:
            wait_listening(db, config)
            Rescuer(config, interval_ms=5_000, worker_stale_threshold_ms=60_000).run_once(
                db, in_an_hour()
            )
            with pytest.raises(JobFailed) as info:
                future.result(timeout=WAKE_DEADLINE_S)
        assert info.value.status == "failed"
        assert "lease expired" in (info.value.error or "")
