"""Migration 0007 (finished jobs leave the hot table) applied to a queue in use.

A schema is built up to version 6 and filled, with plain SQL written against
that layout, with jobs in every state a live queue holds: finished ones with
their attempt logs, archived ones, unfinished ones (waiting, available,
delayed, running on workers dead, hung or alive) and their dependencies. The
real migration then runs, and the tests check that every job was kept where
the new layout wants it, that a worker in the middle of an attempt when the
migration ran can still record its finish, and that workers and the
orchestrator's maintenance take every unfinished job to the end it should
reach.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from orchestra import Config, JobDefinition, JobFailed, JobHandle, Worker, _migrate, events
from orchestra._orchestrator._finalizer import Finalizer
from orchestra._orchestrator._rescuer import Rescuer
from orchestra._orchestrator._service import RunResult
from orchestra.testing import EventRecorder, wait_until
from tests._running import running
from tests._worker_sql import finish_params

#: The layout before the migration under test, and the migration's own version.
BEFORE_HOT_TABLE = 6
HOT_TABLE = 7
#: Ids per history partition (schemas/0007_hot_table.sql).
PARTITION_WIDTH = 1_000_000
#: The columns a history row keeps from the job's row.
JOB_COLUMNS_KEPT = (
    "id",
    "definition",
    "channel",
    "status",
    "priority",
    "payload",
    "result",
    "attempt",
    "max_attempts",
    "run_at",
    "unique_key",
    "resource_key",
    "tick_at",
    "created_at",
    "started_at",
    "finalized_at",
    "last_error",
    "trace_context",
    "created_by",
)
UNIQUE_KEY = "monthly-report"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#: The deadline of every wait on workers (generous: a loaded CI machine).
RUN_TIMEOUT_S = 60.0


def double(payload: dict[str, Any]) -> dict[str, int]:
    """The job function of the ``work`` definition."""
    return {"doubled": payload["n"] * 2}


def q(db: psycopg.Connection[Any], schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` with ``{s}`` replaced by the quoted schema; its rows (none for a command)."""
    cursor = db.execute(query.replace("{s}", f'"{schema}"'), list(params))
    return cursor.fetchall() if cursor.description is not None else []


def insert(db: psycopg.Connection[Any], schema: str, table: str, columns: Mapping[str, Any]) -> Any:
    """INSERT one row of ``columns`` into ``schema.table``; the first column it returns."""
    query = sql.SQL("INSERT INTO {table} ({names}) VALUES ({values}) RETURNING *").format(
        table=sql.Identifier(schema, table),
        names=sql.SQL(", ").join(map(sql.Identifier, columns)),
        values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    row = db.execute(query, list(columns.values())).fetchone()
    assert row is not None
    return row[0]


def version_of(db: psycopg.Connection[Any], schema: str) -> int:
    """The schema version recorded in ``schema``."""
    return _migrate.current_version(db, schema)


@attrs.frozen
class Queue:
    """The ids of the jobs and worker rows written in the version-6 layout."""

    archived_ok: int
    archived_bad: int
    dependency_ok: int
    dependency_bad: int
    succeeded: int
    cancelled: int
    tick_done: int
    available: int
    keyed: int
    delayed: int
    waiting_on_available: int
    waiting_ok: int
    waiting_bad: int
    stale_running: int
    expired_running: int
    in_flight: int
    stale_worker: int
    hung_worker: int
    alive_worker: int
    in_flight_token: uuid.UUID
    in_flight_started_at: dt.datetime

    @property
    def finished(self) -> set[int]:
        """The jobs of the hot table that had ended."""
        return {
            self.dependency_ok,
            self.dependency_bad,
            self.succeeded,
            self.cancelled,
            self.tick_done,
        }

    @property
    def archived(self) -> set[int]:
        """The jobs of job_archive."""
        return {self.archived_ok, self.archived_bad}

    @property
    def unfinished(self) -> set[int]:
        """The jobs of the hot table that had not ended."""
        return {
            self.available,
            self.keyed,
            self.delayed,
            self.waiting_on_available,
            self.waiting_ok,
            self.waiting_bad,
            self.stale_running,
            self.expired_running,
            self.in_flight,
        }


def attempt_json(
    entry_id: int,
    attempt: int,
    outcome: str,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    error: str | None = None,
) -> dict[str, Any]:
    """One element of job_archive.attempts, as job_sweep_finalized wrote it."""
    return {
        "id": entry_id,
        "attempt": attempt,
        "worker_id": 501,
        "worker_name": "w-archived",
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "outcome": outcome,
        "error": error,
        "traceback": None if error is None else f"Traceback ...\n{error}\n",
        "lock_token": None,
    }


def fill_version_6_queue(db: psycopg.Connection[Any], schema: str) -> Queue:
    """Write jobs in every state into a schema at version 6, as that version's code did."""
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    now: dt.datetime = row[0]
    long_ago = now - dt.timedelta(days=30)
    minute = dt.timedelta(minutes=1)

    def job(**columns: Any) -> int:
        columns.setdefault("definition", "work")
        columns.setdefault("channel", "_default")
        columns.setdefault("max_attempts", 3)
        columns.setdefault("created_at", now - 10 * minute)
        columns.setdefault("run_at", columns["created_at"])
        columns.setdefault("created_by", "producer")
        for name in ("payload", "result"):
            if name in columns and columns[name] is not None:
                columns[name] = Jsonb(columns[name])
        return int(insert(db, schema, "job", columns))

    def attempt(job_id: int, number: int, outcome: str, at: dt.datetime, **columns: Any) -> None:
        error = None if outcome == "succeeded" else f"RuntimeError: boom {number}"
        insert(
            db,
            schema,
            "job_attempt",
            {
                "job_id": job_id,
                "attempt": number,
                "worker_id": 301,
                "worker_name": "w-before",
                "started_at": at,
                "finished_at": at + dt.timedelta(seconds=1),
                "outcome": outcome,
                "error": error,
                "traceback": None if error is None else f"Traceback ...\n{error}\n",
                "lock_token": uuid.uuid4(),
                **columns,
            },
        )

    def depends(job_id: int, *required: int) -> None:
        for required_id in required:
            insert(db, schema, "job_dependency", {"job_id": job_id, "required_job_id": required_id})

    def worker(name: str, heartbeat_at: dt.datetime) -> int:
        return int(
            insert(
                db,
                schema,
                "worker",
                {
                    "name": name,
                    "role": "worker",
                    "host": "old-host",
                    "pid": 4242,
                    "channel": "_default",
                    "concurrency": 1,
                    "started_at": heartbeat_at - dt.timedelta(hours=1),
                    "heartbeat_at": heartbeat_at,
                    "secret_hash": b"\x00" * 32,
                },
            )
        )

    for name, repeat_interval_ms in (("work", None), ("tick", 60_000)):
        insert(
            db,
            schema,
            "job_definition",
            {
                "name": name,
                "channel": "_default",
                "num_attempts": 3,
                "backoff": "none",
                "backoff_base_ms": 0,
                "backoff_max_ms": 0,
                "priority": 0,
                "repeat_interval_ms": repeat_interval_ms,
                "lock_interval_ms": 5_000,
                # No overall timeout: the finalizer must fail only what it should.
                "timeout_interval_ms": 0,
            },
        )

    # Archived jobs took their ids from the job sequence before they were swept.
    sequence = f'"{schema}".job_id_seq'
    archived_ids = [
        int(q(db, schema, "SELECT nextval(%s::regclass)", sequence)[0][0]) for _ in range(2)
    ]
    archived_at = now - dt.timedelta(days=40)
    for job_id, status, result, last_error, attempts in (
        (
            archived_ids[0],
            "succeeded",
            {"doubled": 200},
            None,
            [attempt_json(11, 1, "succeeded", archived_at, archived_at + minute)],
        ),
        (
            archived_ids[1],
            "failed",
            None,
            "RuntimeError: boom 2",
            [
                attempt_json(
                    12, 1, "failed", archived_at, archived_at + minute, "RuntimeError: boom 1"
                ),
                attempt_json(
                    13,
                    2,
                    "failed",
                    archived_at + 2 * minute,
                    archived_at + 3 * minute,
                    "RuntimeError: boom 2",
                ),
            ],
        ),
    ):
        insert(
            db,
            schema,
            "job_archive",
            {
                "id": job_id,
                "definition": "work",
                "channel": "_default",
                "status": status,
                "priority": 0,
                "payload": Jsonb({"n": 100 + len(attempts)}),
                "result": None if result is None else Jsonb(result),
                "attempt": len(attempts),
                "max_attempts": 2,
                "run_at": archived_at,
                "created_at": archived_at,
                "started_at": archived_at + (len(attempts) - 1) * 2 * minute,
                "finalized_at": archived_at + (2 * len(attempts) - 1) * minute,
                "last_error": last_error,
                "attempts": Jsonb(attempts),
                "trace_context": json.dumps({"traceparent": TRACEPARENT}),
                "created_by": "producer",
                "archived_at": archived_at + dt.timedelta(days=1),
            },
        )

    # Finished jobs, with their attempt-log rows (a success had one too).
    dependency_ok = job(
        payload={"n": 1},
        result={"doubled": 2},
        status="succeeded",
        attempt=1,
        created_at=long_ago,
        started_at=long_ago + minute,
        finalized_at=long_ago + 2 * minute,
        trace_context=json.dumps({"traceparent": TRACEPARENT}),
    )
    attempt(dependency_ok, 1, "succeeded", long_ago + minute)
    dependency_bad = job(
        payload={"n": 2},
        status="failed",
        attempt=3,
        started_at=now - 3 * minute,
        finalized_at=now - 2 * minute,
        last_error="RuntimeError: boom 3",
    )
    for number in (1, 2, 3):
        attempt(dependency_bad, number, "failed", now - (7 - number) * minute)
    succeeded = job(
        payload={"n": 42},
        result={"doubled": 84},
        status="succeeded",
        attempt=2,
        started_at=now - 4 * minute,
        finalized_at=now - 4 * minute + dt.timedelta(seconds=1),
        last_error="RuntimeError: boom 1",
    )
    attempt(succeeded, 1, "failed", now - 5 * minute)
    attempt(succeeded, 2, "succeeded", now - 4 * minute)
    depends(succeeded, dependency_ok)  # an edge between two finished jobs
    # Its unique key is free again: an unfinished job holds it now (keyed, below).
    cancelled = job(
        payload={"n": 4},
        status="cancelled",
        unique_key=UNIQUE_KEY,
        finalized_at=now - 8 * minute,
        last_error="cancelled",
    )
    tick_at = now.replace(second=0, microsecond=0) - minute
    tick_done = job(
        definition="tick",
        payload={},
        status="succeeded",
        attempt=1,
        tick_at=tick_at,
        created_at=tick_at,
        started_at=tick_at,
        finalized_at=tick_at + dt.timedelta(seconds=1),
    )
    attempt(tick_done, 1, "succeeded", tick_at)

    # Unfinished jobs.
    available = job(payload={"n": 6}, status="available", run_at=now - minute)
    keyed = job(payload={"n": 7}, status="available", unique_key=UNIQUE_KEY)
    # Due a few seconds from now: the workers start before it is due (unless
    # the machine is very slow, which changes nothing below), so it shows a
    # delay surviving the migration and being honoured afterwards.
    delayed = job(payload={"n": 8}, status="available", run_at=now + dt.timedelta(seconds=3))
    waiting_on_available = job(payload={"n": 9}, status="waiting")
    depends(waiting_on_available, available, dependency_ok)
    # Its dependency succeeded long ago and its release was missed (deferred
    # in a transaction that committed after the dependency's finish): the
    # finalizer's catch-up releases it.
    waiting_ok = job(payload={"n": 10}, status="waiting")
    depends(waiting_ok, dependency_ok)
    waiting_bad = job(payload={"n": 11}, status="waiting")
    depends(waiting_bad, dependency_bad)

    stale_worker = worker("stale", now - dt.timedelta(minutes=10))
    hung_worker = worker("hung", now)
    alive_worker = worker("alive", now)
    # Running on a worker whose heartbeat stopped, its lease still valid: the
    # rescuer takes it back as worker_lost.
    stale_running = job(
        payload={"n": 12},
        status="running",
        attempt=2,
        locked_by=stale_worker,
        lock_token=uuid.uuid4(),
        locked_until=now + dt.timedelta(hours=1),
        started_at=now - 5 * minute,
    )
    attempt(stale_running, 1, "failed", now - 6 * minute)
    # Running with an expired lease on a worker that still heartbeats (hung):
    # taken back as lease_expired. Retried by hand after a first failure, so
    # its attempt numbers started again at 1.
    expired_running = job(
        payload={"n": 13},
        status="running",
        attempt=1,
        locked_by=hung_worker,
        lock_token=uuid.uuid4(),
        locked_until=now - minute,
        started_at=now - 2 * minute,
    )
    attempt(expired_running, 1, "failed", now - dt.timedelta(hours=1))
    # Running on a live worker while the migration runs: it finishes afterwards.
    in_flight_token = uuid.uuid4()
    in_flight_started_at = now - dt.timedelta(seconds=5)
    in_flight = job(
        payload={"n": 14},
        status="running",
        attempt=1,
        locked_by=alive_worker,
        lock_token=in_flight_token,
        locked_until=now + dt.timedelta(hours=1),
        started_at=in_flight_started_at,
    )
    return Queue(
        archived_ok=archived_ids[0],
        archived_bad=archived_ids[1],
        dependency_ok=dependency_ok,
        dependency_bad=dependency_bad,
        succeeded=succeeded,
        cancelled=cancelled,
        tick_done=tick_done,
        available=available,
        keyed=keyed,
        delayed=delayed,
        waiting_on_available=waiting_on_available,
        waiting_ok=waiting_ok,
        waiting_bad=waiting_bad,
        stale_running=stale_running,
        expired_running=expired_running,
        in_flight=in_flight,
        stale_worker=stale_worker,
        hung_worker=hung_worker,
        alive_worker=alive_worker,
        in_flight_token=in_flight_token,
        in_flight_started_at=in_flight_started_at,
    )


@attrs.frozen
class Snapshot:
    """What the tables hold, as JSON (``to_jsonb`` of each row), keyed by job id."""

    jobs: Mapping[int, dict[str, Any]]
    attempt_logs: Mapping[int, list[dict[str, Any]]]
    archive: Mapping[int, dict[str, Any]]
    edges: frozenset[tuple[int, int]]
    last_id: int


def by_id(db: psycopg.Connection[Any], schema: str, query: str) -> dict[int, Any]:
    """The rows of a two-column query (id, value) as a dict."""
    return {int(row[0]): row[1] for row in q(db, schema, query)}


def attempt_logs(db: psycopg.Connection[Any], schema: str) -> dict[int, list[dict[str, Any]]]:
    """The attempt-log rows of each job, as the migration writes them into a history row."""
    return by_id(
        db,
        schema,
        "SELECT job_id, jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)"
        " FROM {s}.job_attempt a GROUP BY job_id",
    )


def hot_rows(db: psycopg.Connection[Any], schema: str) -> dict[int, dict[str, Any]]:
    """Every row of the hot table as JSON, by id."""
    return by_id(db, schema, "SELECT id, to_jsonb(j) FROM {s}.job j")


def history_rows(db: psycopg.Connection[Any], schema: str) -> dict[int, dict[str, Any]]:
    """Every row of job_history as JSON, by id."""
    return by_id(db, schema, "SELECT id, to_jsonb(h) FROM {s}.job_history h")


def edges_of(db: psycopg.Connection[Any], schema: str) -> frozenset[tuple[int, int]]:
    """The dependency edges, as (job, required job)."""
    rows = q(db, schema, "SELECT job_id, required_job_id FROM {s}.job_dependency")
    return frozenset((int(r[0]), int(r[1])) for r in rows)


def last_job_id(db: psycopg.Connection[Any], schema: str) -> int:
    """The last value the job id sequence gave."""
    return int(q(db, schema, "SELECT last_value FROM {s}.job_id_seq")[0][0])


def snapshot(db: psycopg.Connection[Any], schema: str) -> Snapshot:
    """Read the version-6 tables before the migration."""
    return Snapshot(
        jobs=hot_rows(db, schema),
        attempt_logs=attempt_logs(db, schema),
        archive=by_id(db, schema, "SELECT id, to_jsonb(x) - 'archived_at' FROM {s}.job_archive x"),
        edges=edges_of(db, schema),
        last_id=last_job_id(db, schema),
    )


def assert_log_moved(row: dict[str, Any], log: list[dict[str, Any]]) -> None:
    """``log`` (the rows of job_attempt, or an archived job's JSON) is in ``row``.

    A succeeded job's last entry, its success, is the history row's own record
    of the attempt: worker and lock token in its columns, not in the JSON.
    """
    if row["status"] == "succeeded" and log and log[-1]["outcome"] == "succeeded":
        success, log = log[-1], log[:-1]
        assert (row["worker_id"], row["worker_name"], row["lock_token"]) == (
            success["worker_id"],
            success["worker_name"],
            success["lock_token"],
        ), row["id"]
    assert row["attempts"] == log, row["id"]


def partitions_of(db: psycopg.Connection[Any], schema: str, ids: set[int]) -> dict[int, str]:
    """The partition that holds each history row of ``ids``."""
    rows = q(
        db,
        schema,
        "SELECT h.id, c.relname::text FROM {s}.job_history h"
        " JOIN pg_class c ON c.oid = h.tableoid WHERE h.id = ANY(%s::bigint[])",
        sorted(ids),
    )
    return {int(r[0]): str(r[1]) for r in rows}


def partition_for(job_id: int) -> str:
    """The name of the history partition whose range holds ``job_id``."""
    return f"job_history_{job_id // PARTITION_WIDTH * PARTITION_WIDTH}"


def outcomes(config: Config, job_id: int) -> list[tuple[int, str]]:
    """The attempt log of a job through the public API, as (attempt, outcome)."""
    attempts = config.jobs.get(job_id).attempts
    assert attempts is not None
    return [(a.attempt, a.outcome) for a in attempts]


def signature(result: RunResult) -> list[tuple[str, int, str | None]]:
    """A maintenance pass's events as (event, job or worker id, reason), sorted."""

    def one(event: events.Event) -> tuple[str, int, str | None]:
        if isinstance(event, events.OrchestratorWorkerLost):
            return type(event).__name__, event.worker_id, None
        assert isinstance(
            event,
            events.OrchestratorJobRescued
            | events.OrchestratorJobFinalized
            | events.OrchestratorJobReleased,
        ), event
        return type(event).__name__, event.job_id, event.reason

    return sorted(one(e) for e in result.events)


def wait_for_empty_hot_table(db: psycopg.Connection[Any], schema: str) -> None:
    """Wait until every job has ended; name the ones that did not when the deadline passes."""

    def left() -> list[tuple[Any, ...]]:
        return q(
            db, schema, "SELECT id, status::text, attempt, last_error FROM {s}.job ORDER BY id"
        )

    try:
        wait_until(lambda: not left(), timeout=RUN_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(f"jobs still unfinished after {RUN_TIMEOUT_S} s: {left()}") from None


@pytest.fixture
def config(test_dsn: str, schema: str) -> Iterator[Config]:
    """A Config on a schema of its own that is NOT migrated (the tests migrate it)."""
    cfg = Config(test_dsn, schema=schema)
    yield cfg
    cfg.close()


class TestHotTableMigration:
    def test_every_job_is_kept_and_every_unfinished_job_ends_where_it_should(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A queue in use migrates to the hot-table layout losing nothing, and keeps working."""
        schema = config.schema
        work = JobDefinition(
            config,
            name="work",
            job_function=double,
            num_attempts=3,
            lock_interval_ms=5_000,
            timeout_interval_ms=0,
        )
        _migrate.migrate(db, schema, up_to=BEFORE_HOT_TABLE)
        assert version_of(db, schema) == BEFORE_HOT_TABLE
        queue = fill_version_6_queue(db, schema)
        before = snapshot(db, schema)
        assert set(before.jobs) == queue.finished | queue.unfinished
        assert set(before.archive) == queue.archived

        # 0007 first, then any later migration.
        assert config.prepare_schema()[0] == "0007_hot_table"

        # -- what the migration kept, and where ------------------------------
        assert version_of(db, schema) >= HOT_TABLE
        config.check_schema()
        assert q(db, schema, "SELECT to_regclass(%s) IS NULL", f'"{schema}".job_archive') == [
            (True,)
        ]
        history = history_rows(db, schema)
        assert set(history) == queue.finished | queue.archived
        for job_id in queue.finished:
            old = before.jobs[job_id]
            kept = {column: history[job_id][column] for column in JOB_COLUMNS_KEPT}
            assert kept == {column: old[column] for column in JOB_COLUMNS_KEPT}, job_id
            # The attempt-log rows moved into the row; a success became the
            # row's own record of its attempt.
            assert_log_moved(history[job_id], before.attempt_logs.get(job_id, []))
        for job_id in queue.archived:
            old = before.archive[job_id]
            kept = {column: history[job_id][column] for column in JOB_COLUMNS_KEPT}
            assert kept == {column: old[column] for column in JOB_COLUMNS_KEPT}
            assert_log_moved(history[job_id], old["attempts"])
        succeeded = history[queue.succeeded]
        assert (succeeded["status"], succeeded["result"], succeeded["payload"]) == (
            "succeeded",
            {"doubled": 84},
            {"n": 42},
        )
        assert [(a["attempt"], a["outcome"]) for a in succeeded["attempts"]] == [(1, "failed")]
        assert q(
            db,
            schema,
            "SELECT attempt, outcome FROM {s}.all_job_attempts WHERE job_id = %s ORDER BY attempt",
            queue.succeeded,
        ) == [(1, "failed"), (2, "succeeded")]
        # Unfinished jobs stay in the hot table exactly as they were, with
        # their attempt-log rows; the finished jobs' rows are gone from it.
        # (Later migrations add columns, with their defaults: the columns the
        # rows had are compared.)
        hot = hot_rows(db, schema)
        assert {
            i: {column: row[column] for column in before.jobs[i]} for i, row in hot.items()
        } == {i: before.jobs[i] for i in queue.unfinished}
        assert attempt_logs(db, schema) == {
            job_id: log for job_id, log in before.attempt_logs.items() if job_id in queue.unfinished
        }
        assert edges_of(db, schema) == before.edges
        # Every history row sits in the partition of its id range, none in the default one.
        kept_ids = queue.finished | queue.archived
        assert partitions_of(db, schema, kept_ids) == {i: partition_for(i) for i in kept_ids}
        assert q(db, schema, "SELECT count(*) FROM {s}.job_history_default") == [(0,)]
        assert last_job_id(db, schema) == before.last_id

        # -- the public API on the migrated queue ----------------------------
        # The unique key is held by the unfinished job, not by the cancelled one.
        again = work.defer({"n": 70}, unique_key=UNIQUE_KEY)
        assert (again.id, again.deduplicated) == (queue.keyed, True)
        fresh = work.defer({"n": 15})
        assert fresh.id > max(queue.finished | queue.unfinished | queue.archived)
        assert fresh.id > before.last_id

        # A worker that was running a job while the migration ran records its
        # finish: the fence (id, attempt, lock token) still matches.
        finished = db.execute(
            config.queries["job_finish_many"],
            finish_params(
                config,
                job_id=queue.in_flight,
                attempt=1,
                token=queue.in_flight_token,
                started_at=queue.in_flight_started_at,
                outcome="succeeded",
                result=json.dumps({"doubled": 28}),
                worker_id=queue.alive_worker,
                worker_name="alive",
            ),
        ).fetchall()
        assert [(r[0], r[1]) for r in finished] == [(queue.in_flight, "succeeded")]

        # -- the orchestrator's maintenance, once ----------------------------
        rescued = Rescuer(config, interval_ms=5_000, worker_stale_threshold_ms=60_000).run_once(db)
        assert signature(rescued) == sorted(
            [
                ("OrchestratorWorkerLost", queue.stale_worker, None),
                ("OrchestratorJobRescued", queue.stale_running, "worker_lost"),
                ("OrchestratorJobRescued", queue.expired_running, "lease_expired"),
            ]
        )
        finalized = Finalizer(config, interval_ms=5_000).run_once(db)
        assert signature(finalized) == sorted(
            [
                ("OrchestratorJobFinalized", queue.waiting_bad, "unmet_dependencies"),
                ("OrchestratorJobReleased", queue.waiting_ok, "dependencies_met"),
            ]
        )

        # -- real workers take every unfinished job to its end ---------------
        recorder = EventRecorder()
        with running(
            Worker(
                config,
                concurrency=4,
                name="after-migration",
                process_interval_ms=100,
                event_handler=recorder,
            )
        ):
            wait_for_empty_hot_table(db, schema)
        assert recorder.of_type(events.WorkerJobFailed) == []

        doubled = {
            queue.available: 12,
            queue.keyed: 14,
            queue.delayed: 16,
            queue.waiting_on_available: 18,
            queue.waiting_ok: 20,
            queue.stale_running: 24,
            queue.expired_running: 26,
            queue.in_flight: 28,
            fresh.id: 30,
            queue.dependency_ok: 2,
            queue.succeeded: 84,
            queue.archived_ok: 200,
        }
        for job_id, value in doubled.items():
            assert JobHandle(job_id, config).result(timeout=10) == {"doubled": value}, job_id
        assert JobHandle(queue.tick_done, config).result(timeout=10) is None
        for job_id, status, error in (
            (queue.dependency_bad, "failed", "RuntimeError: boom 3"),
            (queue.archived_bad, "failed", "RuntimeError: boom 2"),
            (queue.cancelled, "cancelled", "cancelled"),
        ):
            with pytest.raises(JobFailed) as failure:
                JobHandle(job_id, config).result(timeout=10)
            assert (failure.value.status, failure.value.error) == (status, error)
        with pytest.raises(JobFailed) as unmet:
            JobHandle(queue.waiting_bad, config).result(timeout=10)
        assert unmet.value.status == "failed"
        assert (unmet.value.error or "").startswith("unmet_dependencies")

        # Attempt logs through the public API: migrated, rescued and new alike.
        assert outcomes(config, queue.succeeded) == [(1, "failed"), (2, "succeeded")]
        assert outcomes(config, queue.dependency_bad) == [
            (1, "failed"),
            (2, "failed"),
            (3, "failed"),
        ]
        assert outcomes(config, queue.archived_ok) == [(1, "succeeded")]
        assert outcomes(config, queue.archived_bad) == [(1, "failed"), (2, "failed")]
        assert outcomes(config, queue.stale_running) == [
            (1, "failed"),
            (2, "lost"),
            (3, "succeeded"),
        ]
        assert outcomes(config, queue.expired_running) == [
            (1, "failed"),
            (1, "lost"),
            (2, "succeeded"),
        ]
        assert outcomes(config, queue.in_flight) == [(1, "succeeded")]
        assert outcomes(config, queue.available) == [(1, "succeeded")]
        assert outcomes(config, queue.waiting_bad) == []
        in_flight = config.jobs.get(queue.in_flight)
        assert in_flight.attempts is not None
        assert in_flight.attempts[-1].worker_id == queue.alive_worker
        delayed = config.jobs.get(queue.delayed)
        assert delayed.status == "succeeded"
        assert delayed.started_at is not None and delayed.started_at >= delayed.run_at
        migrated = config.jobs.get(queue.succeeded)
        assert (migrated.status, migrated.payload, migrated.result, migrated.last_error) == (
            "succeeded",
            {"n": 42},
            {"doubled": 84},
            "RuntimeError: boom 1",
        )
        assert migrated.created_at == dt.datetime.fromisoformat(
            before.jobs[queue.succeeded]["created_at"]
        )

        # Once its holder ended, the unique key is free: a new job takes it.
        renewed = work.defer({"n": 71}, unique_key=UNIQUE_KEY)
        assert not renewed.deduplicated
        assert renewed.id > fresh.id
        assert renewed.status() == "available"
        assert q(db, schema, "SELECT count(*) FROM {s}.job_history_default") == [(0,)]

    def test_an_empty_queue_migrates_and_its_first_job_lands_in_a_partition(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """An empty version-6 schema migrates; its first job ends in a history partition."""
        schema = config.schema
        JobDefinition(config, name="work", job_function=double, lock_interval_ms=5_000)
        _migrate.migrate(db, schema, up_to=BEFORE_HOT_TABLE)
        assert version_of(db, schema) == BEFORE_HOT_TABLE
        assert config.prepare_schema()[0] == "0007_hot_table"  # then any later migration
        assert version_of(db, schema) >= HOT_TABLE
        partitions = {
            str(r[0])
            for r in q(
                db,
                schema,
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = %s::regclass",
                f'"{schema}".job_history',
            )
        }
        assert {"job_history_default", partition_for(1)} <= partitions

        handle = config.definitions["work"].defer({"n": 3})
        recorder = EventRecorder()
        with running(Worker(config, name="first", process_interval_ms=100, event_handler=recorder)):
            assert handle.result(timeout=RUN_TIMEOUT_S) == {"doubled": 6}
        # Not job_history_default: the migration made the partition of the first ids.
        assert partitions_of(db, schema, {handle.id}) == {handle.id: "job_history_0"}
        assert q(db, schema, "SELECT count(*) FROM {s}.job") == [(0,)]
