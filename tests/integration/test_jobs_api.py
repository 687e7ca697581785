"""The job management API (``config.jobs`` and ``config.jobs_async``) against a real PostgreSQL.

What it guarantees:

* failed jobs can be listed, retried (back to available, with a fresh
  attempt budget; attempt numbers go on) or deleted, in bulk;
* find by id, list by status with limit, offset and order, and no hidden
  time window (old jobs are listed like new ones).

Most tests run twice, through the sync :class:`~orchestra._jobs.Jobs` and the
async :class:`~orchestra._jobs.AsyncJobs` (driven by an :class:`asyncio.Runner`),
via the ``api`` fixture. States that a worker would produce are set with SQL
where the test is about the API, and produced by a real Worker where the test
is about the interplay (retry then success, cancel then fenced finish).
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import psycopg
import pytest
from psycopg.types.json import Jsonb

from orchestra import (
    Attempt,
    Config,
    ConfigurationError,
    DefinitionInfo,
    Job,
    JobContext,
    JobDefinition,
    JobHandle,
    JobStateError,
    UnknownJobError,
    Worker,
    events,
)
from orchestra._jobs import AsyncJobs
from orchestra.testing import EventRecorder, run_until_empty, wait_until
from tests._finished_jobs import FINISHED, finish_by_sql
from tests._running import running

# -- the API under test, sync or async ------------------------------------------


class JobsApi(Protocol):
    """The methods of Jobs, which AsyncJobs has as coroutines."""

    def get(self, job_id: int | JobHandle, *, with_attempts: bool = True) -> Job: ...

    def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        definition: str | None = None,
        channel: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "asc",
    ) -> list[Job]: ...

    def count(
        self,
        *,
        status: str | Iterable[str] | None = None,
        definition: str | None = None,
        channel: str | None = None,
    ) -> int: ...

    def retry(self, job_id: int | JobHandle) -> Job: ...

    def retry_failed(self, *, definition: str | None = None) -> int: ...

    def cancel(self, job_id: int | JobHandle) -> Job: ...

    def delete(self, job_id: int | JobHandle) -> None: ...

    def delete_failed(self, *, definition: str | None = None) -> int: ...

    def definitions(self) -> builtins.list[DefinitionInfo]: ...


class RunAsync:
    """AsyncJobs behind the sync interface: each call runs on one event loop."""

    def __init__(self, jobs: AsyncJobs, runner: asyncio.Runner) -> None:
        self._jobs = jobs
        self._runner = runner

    def get(self, job_id: int | JobHandle, *, with_attempts: bool = True) -> Job:
        return self._runner.run(self._jobs.get(job_id, with_attempts=with_attempts))

    def list(self, **kwargs: Any) -> list[Job]:
        return self._runner.run(self._jobs.list(**kwargs))

    def count(self, **kwargs: Any) -> int:
        return self._runner.run(self._jobs.count(**kwargs))

    def retry(self, job_id: int | JobHandle) -> Job:
        return self._runner.run(self._jobs.retry(job_id))

    def retry_failed(self, *, definition: str | None = None) -> int:
        return self._runner.run(self._jobs.retry_failed(definition=definition))

    def cancel(self, job_id: int | JobHandle) -> Job:
        return self._runner.run(self._jobs.cancel(job_id))

    def delete(self, job_id: int | JobHandle) -> None:
        self._runner.run(self._jobs.delete(job_id))

    def delete_failed(self, *, definition: str | None = None) -> int:
        return self._runner.run(self._jobs.delete_failed(definition=definition))

    def definitions(self) -> builtins.list[DefinitionInfo]:
        return self._runner.run(self._jobs.definitions())


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, config: Config) -> Iterator[JobsApi]:
    """config.jobs, or config.jobs_async run on an event loop of the test's own."""
    if request.param == "sync":
        yield config.jobs
        return
    with asyncio.Runner() as runner:
        yield RunAsync(config.jobs_async, runner)
        runner.run(config.close_async())


# -- helpers ----------------------------------------------------------------------


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


def boom(payload: Any = None) -> None:
    """A job function that always fails."""
    raise ValueError("boom")


def define(config: Config, name: str, function: Callable[..., Any] = noop, **kwargs: Any) -> Any:
    """A definition with test-friendly settings (no backoff, short leases)."""
    kwargs.setdefault("backoff", "none")
    kwargs.setdefault("lock_interval_ms", 5_000)
    return JobDefinition(config, name=name, job_function=function, **kwargs)


def sql(db: psycopg.Connection[Any], config: Config, query: str, *params: Any) -> list[Any]:
    """Run ``query`` with ``{s}`` as the quoted test schema; return its rows."""
    cursor = db.execute(query.replace("{s}", f'"{config.schema}"'), list(params))
    return cursor.fetchall() if cursor.description else []


def set_status(
    db: psycopg.Connection[Any], config: Config, job_id: int, status: str, **columns: Any
) -> None:
    """Put an unfinished job in ``status`` by SQL, then set ``columns``.

    A final status moves the job into the history (as the statement that
    finishes a job does), and ``columns`` are set there; an unfinished one
    sets the columns the hot table's CHECKs want.
    """
    if status in FINISHED:
        finish_by_sql(db, config, job_id, status, **columns)
        return
    sql(
        db,
        config,
        "UPDATE {s}.job SET status = %s::{s}.job_status,"
        " lock_token = CASE WHEN %s = 'running' THEN gen_random_uuid() END,"
        " locked_until = CASE WHEN %s = 'running' THEN now() + interval '1 hour' END"
        " WHERE id = %s",
        status,
        status,
        status,
        job_id,
    )
    for column, value in columns.items():
        sql(db, config, f"UPDATE {{s}}.job SET {column} = %s WHERE id = %s", value, job_id)


def table_snapshot(db: psycopg.Connection[Any], config: Config) -> list[Any]:
    """Every job row of both tables and every attempt-log row, to show that a refused call wrote nothing."""
    return [
        sql(db, config, "SELECT * FROM {s}.job ORDER BY id"),
        sql(db, config, "SELECT * FROM {s}.job_history ORDER BY id"),
        sql(db, config, "SELECT * FROM {s}.job_attempt ORDER BY id"),
    ]


def listen(db: psycopg.Connection[Any], channel: str) -> None:
    """LISTEN on ``channel`` on the raw test connection."""
    db.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))


def notifications(db: psycopg.Connection[Any], channel: str, count: int) -> list[str]:
    """The payloads of the next ``count`` notifications on ``channel`` (5 s at most)."""
    return [n.payload for n in db.notifies(timeout=5, stop_after=count) if n.channel == channel]


# -- get -----------------------------------------------------------------------


class TestGet:
    def test_get_returns_the_job_with_attempts_errors_and_tracebacks(
        self, api: JobsApi, config: Config
    ) -> None:
        """get() finds a job by id with its fields, dependencies and full attempt log."""
        failing = define(config, "failing", boom, num_attempts=2)
        first = failing.defer({"n": 1}, priority=7)
        run_until_empty(config)
        dependent = define(config, "dependent").defer({"n": 2}, depends_on=[first])

        job = api.get(first.id)
        assert (job.id, job.definition, job.channel, job.status) == (
            first.id,
            "failing",
            "_default",
            "failed",
        )
        assert (job.payload, job.result, job.priority) == ({"n": 1}, None, 7)
        assert (job.attempt, job.max_attempts, job.archived, job.locked_by) == (2, 2, True, None)
        assert job.finalized_at is not None and job.started_at is not None
        assert job.last_error is not None and "ValueError: boom" in job.last_error
        assert job.attempts is not None
        assert [(a.attempt, a.outcome) for a in job.attempts] == [(1, "failed"), (2, "failed")]
        attempt = job.attempts[0]
        assert isinstance(attempt, Attempt)
        assert attempt.error is not None and "boom" in attempt.error
        assert attempt.traceback is not None and "Traceback" in attempt.traceback
        assert attempt.worker_id is not None
        assert attempt.started_at <= attempt.finished_at

        waiting = api.get(dependent, with_attempts=False)
        assert (waiting.status, waiting.depends_on, waiting.attempts) == (
            "waiting",
            (first.id,),
            None,
        )

    def test_get_of_an_unknown_id_raises_unknown_job_error(self, api: JobsApi) -> None:
        """An id that is in neither table raises UnknownJobError naming it."""
        with pytest.raises(UnknownJobError) as info:
            api.get(424242)
        assert info.value.job_ids == (424242,)

    def test_a_finished_job_is_read_from_the_history_and_can_still_be_changed(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A finished job lives in job_history: get() finds it with its log and edges; retry and delete act on it."""
        first = define(config, "first").defer({})
        handle = define(config, "failing", boom).defer({"k": "v"}, depends_on=[first])
        run_until_empty(config)
        assert sql(db, config, "SELECT count(*) FROM {s}.job") == [(0,)]

        job = api.get(handle.id)
        assert (job.archived, job.status, job.payload, job.depends_on) == (
            True,
            "failed",
            {"k": "v"},
            (first.id,),
        )
        assert job.attempts is not None
        assert [(a.attempt, a.outcome) for a in job.attempts] == [(1, "failed")]
        assert job.attempts[0].traceback is not None
        assert api.get(handle.id, with_attempts=False).attempts is None
        assert [(a.attempt, a.outcome) for a in api.get(first.id).attempts or ()] == [
            (1, "succeeded")
        ]

        retried = api.retry(handle.id)
        assert (retried.archived, retried.status, retried.attempt) == (False, "available", 1)
        assert sql(db, config, "SELECT count(*) FROM {s}.job_history WHERE id = %s", handle.id) == [
            (0,)
        ]
        with pytest.raises(JobStateError, match=f"job {handle.id} depends on it"):
            api.delete(first.id)  # its dependent is unfinished again
        api.delete(handle.id)
        api.delete(first.id)  # a finished job, from the history
        with pytest.raises(UnknownJobError):
            api.get(first.id)

    def test_the_success_of_a_job_is_read_from_its_history_row_and_moved_back_on_retry(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A success has no log entry: it comes from the history row; a retry turns the whole log back into rows."""
        finished = define(config, "job").defer({})
        started = "2030-01-01T12:00:00+00:00"
        failure = {
            "attempt": 1,
            "worker_id": 7,
            "worker_name": "w",
            "started_at": started,
            "finished_at": started,
            "outcome": "failed",
            "error": "e",
            "traceback": None,
        }
        token = "5d41402a-bc4b-2a76-b971-9d911017c592"
        finish_by_sql(
            db,
            config,
            finished.id,
            "succeeded",
            attempt=2,
            worker_id=8,
            worker_name="w8",
            lock_token=token,
            attempts=Jsonb([failure]),
        )

        job = api.get(finished.id)
        assert job.attempts is not None
        assert [(a.attempt, a.outcome, a.worker_name) for a in job.attempts] == [
            (1, "failed", "w"),
            (2, "succeeded", "w8"),
        ]
        assert job.attempts[1].finished_at == job.finalized_at

        # The success keeps its lock token: it is the record of a finish that
        # was recorded (job_finish_recorded reads it).
        api.retry(finished.id)
        assert [(a.attempt, a.outcome) for a in api.get(finished.id).attempts or ()] == [
            (1, "failed"),
            (2, "succeeded"),
        ]
        assert sql(
            db,
            config,
            "SELECT attempt, outcome, lock_token::text FROM {s}.job_attempt"
            " WHERE job_id = %s ORDER BY id",
            finished.id,
        ) == [(1, "failed", None), (2, "succeeded", token)]


# -- list and count --------------------------------------------------------------


class TestList:
    def test_list_filters_by_status_definition_and_channel_with_limit_offset_order(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """list() filters by one or several statuses, definition and channel, and pages by id."""
        mail = define(config, "mail", channel="mail")
        report = define(config, "report")
        ids = [mail.defer({"i": i}).id for i in range(4)] + [report.defer({}).id]
        set_status(db, config, ids[0], "failed")
        set_status(db, config, ids[1], "cancelled")
        set_status(db, config, ids[4], "failed")

        assert [j.id for j in api.list()] == ids
        assert [j.id for j in api.list(order="desc")] == ids[::-1]
        assert [j.id for j in api.list(status="failed")] == [ids[0], ids[4]]
        assert [j.id for j in api.list(status=["failed", "cancelled"])] == [*ids[:2], ids[4]]
        assert [j.id for j in api.list(status=("available",), definition="mail")] == ids[2:4]
        assert [j.id for j in api.list(channel="mail", status="failed")] == [ids[0]]
        assert [j.id for j in api.list(definition="nope")] == []
        assert [j.id for j in api.list(limit=2)] == ids[:2]
        assert [j.id for j in api.list(limit=2, offset=2)] == ids[2:4]
        assert [j.id for j in api.list(limit=2, offset=1, order="desc")] == [ids[3], ids[2]]
        assert all(j.attempts is None for j in api.list())

        assert api.count() == 5
        assert api.count(status="failed") == 2
        assert api.count(status=["failed", "cancelled"], definition="mail") == 2
        assert api.count(channel="mail") == 4

    def test_list_has_no_hidden_time_window(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job created 30 days ago is listed and counted like a new one: no hidden time window."""
        definition = define(config, "old")
        old = definition.defer({})
        new = definition.defer({})
        sql(
            db,
            config,
            "UPDATE {s}.job SET created_at = now() - interval '30 days',"
            " run_at = now() - interval '30 days' WHERE id = %s",
            old.id,
        )
        set_status(db, config, old.id, "failed")
        sql(
            db,
            config,
            "UPDATE {s}.job_history SET finalized_at = now() - interval '29 days' WHERE id = %s",
            old.id,
        )
        assert [j.id for j in api.list()] == [old.id, new.id]
        assert [j.id for j in api.list(status="failed")] == [old.id]
        assert api.count(status="failed") == 1
        assert api.get(old.id).created_at < api.get(new.id).created_at


# -- argument checks -----------------------------------------------------------------


BAD_CALLS: list[tuple[str, Callable[[JobsApi], Any], str]] = [
    ("status-unknown", lambda a: a.list(status="bogus"), "status"),
    ("status-unknown-in-list", lambda a: a.list(status=["failed", "nope"]), "status"),
    ("status-empty", lambda a: a.list(status=[]), "status"),
    ("status-not-iterable", lambda a: a.count(status=5), "status"),  # type: ignore[arg-type]
    ("limit-zero", lambda a: a.list(limit=0), "limit"),
    ("limit-too-big", lambda a: a.list(limit=10_001), "limit"),
    ("limit-not-int", lambda a: a.list(limit="10"), "limit"),  # type: ignore[arg-type]
    ("limit-bool", lambda a: a.list(limit=True), "limit"),
    ("offset-negative", lambda a: a.list(offset=-1), "offset"),
    ("order", lambda a: a.list(order="up"), "order"),
    ("definition-empty", lambda a: a.list(definition=""), "definition"),
    ("channel-not-str", lambda a: a.count(channel=3), "channel"),  # type: ignore[arg-type]
    ("get-zero", lambda a: a.get(0), "job_id"),
    ("get-str", lambda a: a.get("1"), "job_id"),  # type: ignore[arg-type]
    ("retry-negative", lambda a: a.retry(-1), "job_id"),
    ("cancel-bool", lambda a: a.cancel(True), "job_id"),
    ("delete-float", lambda a: a.delete(1.0), "job_id"),  # type: ignore[arg-type]
    ("retry-failed-definition", lambda a: a.retry_failed(definition=""), "definition"),
    ("delete-failed-definition", lambda a: a.delete_failed(definition=7), "definition"),  # type: ignore[arg-type]
]


class TestArguments:
    @pytest.mark.parametrize(
        ("call", "argument"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
    )
    def test_bad_arguments_raise_configuration_error_and_write_nothing(
        self,
        api: JobsApi,
        config: Config,
        db: psycopg.Connection[Any],
        call: Callable[[JobsApi], Any],
        argument: str,
    ) -> None:
        """A bad argument raises ConfigurationError naming it; no job changes."""
        define(config, "job").defer({})
        before = table_snapshot(db, config)
        with pytest.raises(ConfigurationError) as info:
            call(api)
        assert info.value.argument == argument
        assert table_snapshot(db, config) == before

    @pytest.mark.parametrize("mode", ["sync", "async"])
    def test_arguments_are_checked_before_connecting(self, mode: str) -> None:
        """With the database unreachable, a bad argument still raises ConfigurationError at once."""
        unreachable = Config("postgresql://nobody@127.0.0.1:1/none", connect_attempts=1)
        with pytest.raises(ConfigurationError) as info:
            if mode == "sync":
                unreachable.jobs.list(limit=0)
            else:
                asyncio.run(unreachable.jobs_async.list(limit=0))
        assert info.value.argument == "limit"

    def test_config_properties_are_cached(self, config: Config) -> None:
        """config.jobs and config.jobs_async are built once per Config."""
        assert config.jobs is config.jobs
        assert config.jobs_async is config.jobs_async


# -- retry --------------------------------------------------------------------------


class TestRetry:
    def test_retry_gives_a_finalized_job_a_fresh_budget(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Succeeded, failed and cancelled jobs go back to available, no result, and their
        attempt numbers go on with the definition's num_attempts more to spend."""
        definition = define(config, "job", num_attempts=3)
        handles = {status: definition.defer({}) for status in ("succeeded", "failed", "cancelled")}
        for status, handle in handles.items():
            set_status(db, config, handle.id, status, attempt=3, last_error="old error")
        sql(
            db,
            config,
            "UPDATE {s}.job_history SET result = '{\"r\": 1}' WHERE id = %s",
            handles["succeeded"].id,
        )

        for handle in handles.values():
            job = api.retry(handle.id)
            assert (job.status, job.attempt, job.max_attempts, job.result) == (
                "available",
                3,
                6,
                None,
            )
            assert job.finalized_at is None and job.locked_by is None
        rows = sql(
            db,
            config,
            "SELECT count(*) FROM {s}.job WHERE run_at <= now() AND lock_token IS NULL"
            " AND status = 'available'",
        )
        assert rows == [(3,)]

    def test_retry_makes_a_job_waiting_for_its_backoff_due_now(
        self, api: JobsApi, config: Config
    ) -> None:
        """An available job whose run_at is in the future becomes due now, keeping its attempts."""
        handle = define(config, "later").defer({}, delay_ms=3_600_000)
        before = api.get(handle.id)
        job = api.retry(handle.id)
        assert job.status == "available" and job.attempt == before.attempt
        assert job.run_at < before.run_at

    @pytest.mark.parametrize(
        ("status", "reason"),
        [("running", "it is running"), ("waiting", "it is waiting for its dependencies")],
    )
    def test_retry_of_a_running_or_waiting_job_is_refused(
        self,
        api: JobsApi,
        config: Config,
        db: psycopg.Connection[Any],
        status: str,
        reason: str,
    ) -> None:
        """Retrying a running or waiting job raises JobStateError and writes nothing."""
        handle = define(config, "busy").defer({})
        set_status(db, config, handle.id, status)
        before = table_snapshot(db, config)
        with pytest.raises(JobStateError) as info:
            api.retry(handle.id)
        assert (info.value.job_id, info.value.status, info.value.action) == (
            handle.id,
            status,
            "retry",
        )
        assert str(info.value) == f"cannot retry job {handle.id}: {reason}"
        assert table_snapshot(db, config) == before

    def test_retry_of_an_unknown_id_raises_unknown_job_error(self, api: JobsApi) -> None:
        """retry(), cancel() and delete() of an id that does not exist raise UnknownJobError."""
        for action in (api.retry, api.cancel, api.delete):
            with pytest.raises(UnknownJobError) as info:
                action(99_999)
            assert info.value.job_ids == (99_999,)

    def test_retry_of_a_job_with_an_unfinished_dependency_makes_it_wait(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A retried job whose dependency has not succeeded goes to waiting, not available."""
        definition = define(config, "chain")
        first = definition.defer({}, delay_ms=3_600_000)
        second = definition.defer({}, depends_on=[first])
        set_status(db, config, second.id, "failed")
        assert api.retry(second.id).status == "waiting"
        set_status(db, config, first.id, "succeeded")
        set_status(db, config, second.id, "failed")
        assert api.retry(second.id).status == "available"

    def test_retry_wakes_the_workers_of_the_jobs_channel(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A retry that makes a job available notifies the workers' channel with its channel."""
        handle = define(config, "mail", channel="mail").defer({})
        set_status(db, config, handle.id, "failed")
        listen(db, config.notify_channel)
        api.retry(handle.id)
        assert notifications(db, config.notify_channel, 1) == ["mail"]

    def test_retry_is_refused_while_another_unfinished_job_holds_the_unique_key(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A retry that would give two unfinished jobs one unique_key is refused; nothing changes."""
        definition = define(config, "dedup")
        old = definition.defer({})
        new = definition.defer({})
        set_status(db, config, old.id, "failed", unique_key="user-42")
        sql(db, config, "UPDATE {s}.job SET unique_key = 'user-42' WHERE id = %s", new.id)
        before = table_snapshot(db, config)
        with pytest.raises(JobStateError) as info:
            api.retry(old.id)
        assert info.value.status == "failed"
        assert f"job {new.id}" in str(info.value) and "'user-42'" in str(info.value)
        assert table_snapshot(db, config) == before
        assert api.retry_failed() == 0

        api.cancel(new.id)
        assert api.retry(old.id).status == "available"

    def test_retry_failed_keeps_one_job_per_unique_key(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Of two failed jobs with one unique_key, the bulk retry takes the newer and keeps the other failed."""
        definition = define(config, "dedup")
        older, newer, plain = (definition.defer({}) for _ in range(3))
        for handle in (older, newer):
            set_status(db, config, handle.id, "failed", unique_key="k")
        set_status(db, config, plain.id, "failed")
        assert api.retry_failed() == 2
        assert [api.get(h.id).status for h in (older, newer, plain)] == [
            "failed",
            "available",
            "available",
        ]

    def test_retry_recomputes_the_limited_flag_from_the_definition(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job retried after its definition gained a rate limit is claimed on the guarded path."""
        handle = define(config, "unlimited").defer({})
        set_status(db, config, handle.id, "failed")
        # A daemon carrying the new version of the definition writes its limit.
        define(config, "unlimited", release_interval_ms=1_000).upsert(db)
        api.retry(handle.id)
        assert sql(db, config, "SELECT limited FROM {s}.job WHERE id = %s", handle.id) == [(True,)]


class TestRetryWithWorker:
    def test_failed_jobs_listed_retried_with_fresh_budget_and_deleted_in_bulk(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Failed jobs are listed, retried in bulk with a fresh budget (run again), then deleted in bulk."""
        failing = define(config, "failing", boom, num_attempts=2)
        other = define(config, "other", boom)
        handles = [failing.defer({"i": i}) for i in range(3)]
        kept = other.defer({})
        run_until_empty(config)

        jobs = config.jobs
        assert [j.id for j in jobs.list(status="failed", definition="failing")] == [
            h.id for h in handles
        ]
        assert jobs.retry_failed(definition="failing") == 3
        assert {(j.status, j.attempt, j.max_attempts) for j in jobs.list(definition="failing")} == {
            ("available", 2, 4)
        }
        assert jobs.get(kept.id).status == "failed"

        run_until_empty(config)  # each gets its whole budget again
        for handle in handles:
            job = jobs.get(handle.id)
            assert (job.status, job.attempt) == ("failed", 4)
            assert job.attempts is not None
            assert [a.attempt for a in job.attempts] == [1, 2, 3, 4]

        assert jobs.delete_failed(definition="failing") == 3
        assert jobs.count(definition="failing") == 0
        assert sql(
            db,
            config,
            "SELECT count(*) FROM {s}.job_attempt WHERE job_id = ANY(%s)",
            [h.id for h in handles],
        ) == [(0,)]
        assert jobs.delete_failed() == 1
        assert jobs.count() == 0

    def test_retry_of_a_job_that_exhausted_its_attempts_runs_it_to_success(
        self, config: Config
    ) -> None:
        """A job that failed every attempt, once retried, runs again and succeeds with a result."""
        state = {"fail": True}

        def flaky(payload: dict[str, int]) -> dict[str, int]:
            if state["fail"]:
                raise RuntimeError("not yet")
            return {"double": payload["n"] * 2}

        handle = define(config, "flaky", flaky, num_attempts=2).defer({"n": 21})
        run_until_empty(config)
        assert config.jobs.get(handle.id).status == "failed"

        state["fail"] = False
        assert config.jobs.retry(handle.id).status == "available"
        run_until_empty(config)
        job = config.jobs.get(handle.id)
        assert (job.status, job.attempt, job.result) == ("succeeded", 3, {"double": 42})
        assert job.attempts is not None
        assert [(a.attempt, a.outcome) for a in job.attempts] == [
            (1, "failed"),
            (2, "failed"),
            (3, "succeeded"),
        ]

    def test_a_succeeded_job_retried_and_run_again_logs_both_successes(
        self, config: Config
    ) -> None:
        """The first success, moved back into the log by the retry, stays; the second comes from the history row."""
        handle = define(config, "twice").defer({})
        run_until_empty(config)
        first = config.jobs.get(handle.id)
        config.jobs.retry(handle.id)
        run_until_empty(config)
        job = config.jobs.get(handle.id)
        assert (job.status, job.attempt) == ("succeeded", 2)
        assert job.attempts is not None and first.attempts is not None
        assert [(a.attempt, a.outcome) for a in job.attempts] == [
            (1, "succeeded"),
            (2, "succeeded"),
        ]
        assert job.attempts[0] == first.attempts[0]
        assert job.attempts[1].finished_at == job.finalized_at


# -- cancel ---------------------------------------------------------------------------------


class TestCancel:
    @pytest.mark.parametrize("status", ["available", "waiting"])
    def test_cancel_finalizes_an_unfinished_job_and_tells_result_waiters(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any], status: str
    ) -> None:
        """cancel() finalizes the job as cancelled and notifies the finished channel with its id."""
        handle = define(config, "job").defer({})
        set_status(db, config, handle.id, status)
        listen(db, config.finished_channel)
        job = api.cancel(handle.id)
        assert (job.status, job.last_error) == ("cancelled", "cancelled")
        assert job.finalized_at is not None
        assert notifications(db, config.finished_channel, 1) == [str(handle.id)]

    def test_cancel_keeps_an_existing_last_error(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job that already failed an attempt keeps that error as last_error."""
        handle = define(config, "job").defer({})
        sql(db, config, "UPDATE {s}.job SET last_error = 'earlier' WHERE id = %s", handle.id)
        assert api.cancel(handle.id).last_error == "earlier"

    @pytest.mark.parametrize(
        ("status", "reason"),
        [
            ("succeeded", "it already succeeded"),
            ("failed", "it already failed"),
            ("cancelled", "it was already cancelled"),
        ],
    )
    def test_cancel_of_a_finalized_job_is_refused(
        self,
        api: JobsApi,
        config: Config,
        db: psycopg.Connection[Any],
        status: str,
        reason: str,
    ) -> None:
        """Cancelling a finalized job raises JobStateError and writes nothing."""
        handle = define(config, "done").defer({})
        set_status(db, config, handle.id, status)
        before = table_snapshot(db, config)
        with pytest.raises(JobStateError) as info:
            api.cancel(handle.id)
        assert str(info.value) == f"cannot cancel job {handle.id}: {reason}"
        assert (info.value.status, info.value.action) == (status, "cancel")
        assert table_snapshot(db, config) == before

    def test_cancel_that_waited_for_a_finish_in_flight_reports_the_finish(
        self, config: Config, db: psycopg.Connection[Any], test_dsn: str
    ) -> None:
        """A cancel blocked by a finish that moves the job to the history sees it succeeded, not unknown."""
        handle = define(config, "job").defer({})
        outcome: dict[str, BaseException | None] = {}

        def cancel() -> None:
            try:
                config.jobs.cancel(handle.id)
                outcome["error"] = None
            except BaseException as exc:
                outcome["error"] = exc

        with psycopg.connect(test_dsn, autocommit=True) as finisher:
            with finisher.transaction():
                finish_by_sql(finisher, config, handle.id, "succeeded")
                thread = threading.Thread(target=cancel)
                thread.start()
                wait_until(
                    lambda: (
                        sql(
                            db,
                            config,
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query LIKE %s",
                            f'%DELETE FROM "{config.schema}".job j%',
                        )
                        == [(1,)]
                    ),
                    message="the cancel never waited for the finish",
                )
            thread.join()
        error = outcome["error"]
        assert isinstance(error, JobStateError), error
        assert str(error) == f"cannot cancel job {handle.id}: it already succeeded"

    def test_cancel_of_a_running_job_stops_it_and_discards_its_return(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """A running job cancelled mid-attempt stays cancelled: its worker stops the
        attempt (ctx.should_stop for a sync function) and discards what it returns."""
        started, told = threading.Event(), threading.Event()

        def slow(payload: Any, ctx: JobContext) -> str:
            started.set()
            while not ctx.should_stop:
                threading.Event().wait(0.01)
            told.set()
            return "too late"

        handle = define(config, "slow", slow).defer({})
        with running(Worker(config, event_handler=recorder, process_interval_ms=50)) as worker:
            assert started.wait(10)
            running_job = config.jobs.get(handle.id)
            assert running_job.status == "running" and running_job.locked_by is not None
            cancelled = config.jobs.cancel(handle.id)
            assert cancelled.status == "cancelled" and cancelled.locked_by is None
            assert told.wait(10)
            (stopped,) = recorder.wait_for(events.WorkerJobCancelled)
            assert stopped.job_id == handle.id
            assert worker.stats.cancelled == 1
            assert worker.stats.fenced == 0 and worker.stats.succeeded == 0

        job = config.jobs.get(handle.id)
        assert (job.status, job.result) == ("cancelled", None)
        assert job.attempts is not None
        assert [(a.attempt, a.outcome) for a in job.attempts] == [(1, "cancelled")]
        assert job.attempts[0].error is not None and "cancelled" in job.attempts[0].error
        assert job.attempts[0].worker_id == running_job.locked_by


# -- delete -----------------------------------------------------------------------------------


class TestDelete:
    def test_delete_removes_the_job_its_attempts_and_its_edges(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """delete() removes a job from either table; its attempt log and dependency edges go with it."""
        definition = define(config, "job")
        first = definition.defer({})
        second = definition.defer({}, depends_on=[first])
        backing_off = definition.defer({})
        for handle in (first, backing_off):
            sql(
                db,
                config,
                "INSERT INTO {s}.job_attempt (job_id, attempt, started_at, outcome)"
                " VALUES (%s, 1, now(), 'failed')",
                handle.id,
            )
        set_status(db, config, first.id, "succeeded")
        set_status(db, config, second.id, "cancelled")
        api.delete(first.id)
        with pytest.raises(UnknownJobError):
            api.get(first.id)
        assert sql(db, config, "SELECT count(*) FROM {s}.job_dependency") == [(0,)]
        assert api.get(second.id).depends_on == ()

        api.delete(backing_off.id)  # an unfinished job, with its attempt-log rows
        with pytest.raises(UnknownJobError):
            api.get(backing_off.id)
        assert sql(db, config, "SELECT count(*) FROM {s}.job_attempt") == [(0,)]
        assert [j.id for j in api.list()] == [second.id]

    def test_delete_of_a_running_job_is_refused(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A running job cannot be deleted (cancel it first)."""
        handle = define(config, "job").defer({})
        set_status(db, config, handle.id, "running")
        with pytest.raises(JobStateError, match=f"cannot delete job {handle.id}: it is running"):
            api.delete(handle.id)
        assert api.get(handle.id).status == "running"

    def test_delete_is_refused_while_an_unfinished_job_depends_on_it(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job an unfinished job depends on is kept, and the error names the dependent."""
        definition = define(config, "job")
        first = definition.defer({})
        second = definition.defer({}, depends_on=[first])
        set_status(db, config, first.id, "failed")
        before = table_snapshot(db, config)
        with pytest.raises(JobStateError) as info:
            api.delete(first.id)
        assert str(info.value) == (
            f"cannot delete job {first.id}: job {second.id} depends on it and is not finished"
        )
        assert table_snapshot(db, config) == before
        assert api.delete_failed() == 0

        set_status(db, config, second.id, "failed")
        assert api.delete_failed() == 2
        assert api.count() == 0

    def test_a_dependent_deferred_while_its_dependency_is_deleted_never_runs(
        self, config: Config, db: psycopg.Connection[Any], test_dsn: str
    ) -> None:
        """A delete does not wait for a defer(depends_on=[job]) still open; that dependent waits for good."""
        definition = define(config, "job")
        first = definition.defer({}, delay_ms=3_600_000)
        done = threading.Event()
        outcome: dict[str, BaseException | None] = {}

        def delete() -> None:
            try:
                config.jobs.delete(first.id)
                outcome["error"] = None
            except BaseException as exc:
                outcome["error"] = exc
            done.set()

        with psycopg.connect(test_dsn, autocommit=True) as producer:
            with producer.transaction():
                dependent = definition.defer({}, depends_on=[first], conn=producer)
                thread = threading.Thread(target=delete)
                thread.start()
                wait_until(done.is_set, message="the delete waited for the open defer")
            thread.join()
        assert outcome["error"] is None
        with pytest.raises(UnknownJobError):
            config.jobs.get(first.id)
        # Its dependency is in neither table: unmet for good (the orchestrator
        # fails it), never met.
        assert dependent.status() == "waiting"
        assert sql(db, config, "SELECT {s}.job_dependencies_met(%s)", dependent.id) == [(False,)]


# -- definitions ----------------------------------------------------------------------------------


class TestDefinitions:
    def test_definitions_lists_settings_and_job_counts_by_name(
        self, api: JobsApi, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """definitions() returns every stored definition, by name, with per-status job counts."""
        mail = define(config, "mail", channel="mail", num_attempts=4, release_interval_ms=250)
        define(config, "cleanup", cron="*/5 * * * *", max_concurrency=2).defer()
        handles = [mail.defer({}) for _ in range(3)]
        set_status(db, config, handles[0].id, "failed")

        infos = api.definitions()
        assert [info.name for info in infos] == ["cleanup", "mail"]
        cleanup, mail_info = infos
        assert (cleanup.cron, cleanup.max_concurrency, cleanup.repeat_interval_ms) == (
            "*/5 * * * *",
            2,
            None,
        )
        assert (mail_info.channel, mail_info.num_attempts, mail_info.backoff) == ("mail", 4, "none")
        assert mail_info.release_interval_ms == 250
        assert mail_info.last_heartbeat_at is not None and mail_info.paused is False
        assert dict(mail_info.counts) == {
            "waiting": 0,
            "scheduled": 0,
            "available": 2,
            "running": 0,
            "succeeded": 0,
            "failed": 1,
            "cancelled": 0,
        }
        assert cleanup.counts["available"] == 1


def test_a_payload_python_cannot_decode_is_shown_as_unreadable_and_its_neighbours_listed(
    config: Config, db: psycopg.Connection[Any]
) -> None:
    """Valid jsonb nested beyond Python's decoder fails neither get() nor list()."""
    echo = JobDefinition(config, name="echo", job_function=lambda payload: payload)
    deep, plain = echo.defer({"n": 1}), echo.defer({"n": 2})
    db.execute(
        f'UPDATE "{config.schema}".job SET payload = %s::jsonb WHERE id = %s',
        ["[" * 5000 + "]" * 5000, deep.id],
    )
    listed = {job.id: job.payload for job in config.jobs.list()}
    assert listed[plain.id] == {"n": 2}
    assert listed[deep.id] == (
        "<unreadable JSON of 10000 characters: "
        "the stored JSON is nested too deeply for Python's JSON decoder>"
    )
    assert config.jobs.get(deep.id).payload == listed[deep.id]
