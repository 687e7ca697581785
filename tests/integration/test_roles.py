"""The least-privilege roles of ``deploy/sql/roles.sql``, applied to a real schema.

Each test applies the file to a schema of its own, with role names suffixed by
the schema name (roles are cluster-wide, tests run in parallel), logs in as
LOGIN roles that inherit the group roles, and shows what each may and may not
do: a producer only inserts jobs and reads its own, unfinished or finished, a
worker runs jobs end to end with a real :class:`Worker` and touches only the
jobs the state machine lets it (it moves into the history only the jobs its
daemons finish), an orchestrator runs its maintenance passes and the history's
retention, the dashboard reads and cannot write, the operator retries, cancels
and deletes jobs, and the migrator owns the schema and migrates it. The
history's partitions are reached through their parent only. Every refused
probe is also shown to have changed nothing.

How the file is applied and the roles dropped: ``tests/_roles.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from orchestra import Config, JobContext, JobDefinition, JobHandle, Orchestrator, Worker, events
from orchestra._orchestrator._sweeper import Sweeper
from orchestra.errors import UnknownJobError
from orchestra.testing import EventRecorder, wait_until
from tests._finished_jobs import move_to_history
from tests._roles import GROUPS, TABLES, Roles, count, denied


@pytest.fixture
def admin(test_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection (the test server's own user)."""
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def unapplied_roles(test_dsn: str, schema: str, admin: psycopg.Connection[Any]) -> Iterator[Roles]:
    """Role names for this test, nothing created yet; everything dropped afterwards."""
    roles = Roles(test_dsn, schema)
    try:
        yield roles
    finally:
        roles.drop(admin)


@pytest.fixture
def roles(config: Config, unapplied_roles: Roles, admin: psycopg.Connection[Any]) -> Roles:
    """roles.sql applied to the test's freshly migrated schema, with LOGIN roles."""
    assert unapplied_roles.apply(admin) == []
    unapplied_roles.create_logins(admin)
    config.close()  # its pool must not hold the schema when the roles are dropped
    return unapplied_roles


# -- job functions ---------------------------------------------------------------------------


def echo(payload: Any) -> Any:
    """Return the payload."""
    return {"echo": payload}


def fail_first(payload: Any, ctx: JobContext) -> Any:
    """Fail the first attempt, succeed on the second."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt


def define(config: Config, succeeded: list[int] | None = None) -> dict[str, JobDefinition[Any]]:
    """The definitions of these tests on ``config`` (same settings in every process)."""

    def on_success(job: Any) -> None:
        if succeeded is not None:
            succeeded.append(job.id)

    return {
        "echo": JobDefinition(config, name="echo", job_function=echo),
        "limited": JobDefinition(
            config, name="limited", job_function=echo, max_concurrency=1, release_interval_ms=1
        ),
        "flaky": JobDefinition(
            config,
            name="flaky",
            job_function=fail_first,
            num_attempts=2,
            backoff="none",
            on_success=on_success,
        ),
        "short": JobDefinition(
            config, name="short", job_function=echo, num_attempts=2, timeout_interval_ms=3_600_000
        ),
    }


# -- the roles -------------------------------------------------------------------------------


def test_the_migrator_owns_the_schema_and_migrates_it(roles: Roles) -> None:
    """After the file, the migrator owns schema and tables, migrates, and new tables follow."""
    with roles.connect("migrator") as conn:
        row = conn.execute("SELECT current_user").fetchone()
        assert row is not None and row[0] == roles.group["migrator"]  # ALTER ROLE ... SET role
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relnamespace = %s::regnamespace AND relkind IN ('r', 'S', 'i')",
            [roles.schema],
        ).fetchall()
        assert owners == [(roles.group["migrator"],)]
        row = conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()
        assert row == (False,)  # least privilege: migrate needs only the schema it owns
    with roles.config("migrator") as migrator:
        assert migrator.prepare_schema() == []  # advisory lock, version table: allowed
        migrator.check_schema()

    # A table of a future migration follows the default privileges.
    with roles.connect("migrator") as conn:
        conn.execute(
            f'CREATE TABLE "{roles.schema}".future_table'
            " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)"
        )
    with roles.connect("producer") as conn:
        conn.execute(f'INSERT INTO "{roles.schema}".future_table (note) VALUES (%s)', ["p"])
        denied(conn, "DELETE FROM {s}.future_table", roles.schema)
    with roles.connect("dashboard") as conn:
        assert count(conn, "SELECT count(*) FROM {s}.future_table", roles.schema) == 1
        denied(conn, "INSERT INTO {s}.future_table (note) VALUES ('d')", roles.schema)
    with roles.connect("orchestrator") as conn:
        conn.execute(f'DELETE FROM "{roles.schema}".future_table')
    for name in GROUPS[1:]:
        with roles.connect(name) as conn:
            denied(conn, "CREATE TABLE {s}.intruder (id int)", roles.schema)


def snapshot(admin: psycopg.Connection[Any], schema: str) -> dict[str, list[Any]]:
    """Every row of the tables a refused probe could have changed, as JSON."""
    return {
        table: [
            row[0]
            for row in admin.execute(
                sql.SQL("SELECT to_jsonb(t) FROM {} t ORDER BY to_jsonb(t)::text").format(
                    sql.Identifier(schema, table)
                )
            )
        ]
        for table in (
            "job",
            "job_history",
            "job_attempt",
            "job_definition",
            "job_dependency",
            "worker",
        )
    }


def refused_by_policy(conn: psycopg.Connection[Any], statement: str, schema: str) -> None:
    """Assert that ``statement`` ({s} is the schema) is refused by a row-level security policy."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        conn.execute(statement.replace("{s}", f'"{schema}"'))


def changed(conn: psycopg.Connection[Any], statement: str, schema: str) -> int:
    """How many rows ``statement`` ({s} is the schema) changed."""
    return conn.execute(statement.replace("{s}", f'"{schema}"')).rowcount


def test_a_producer_defers_and_reads_only_its_own_jobs(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """defer, defer_many, dependencies, dedup, status: a producer's jobs; another's are unseen."""
    roles.add_login(admin, "producer2", "producer")
    with roles.config("producer") as producer, roles.config("producer2") as other:
        jobs = define(producer)
        first = jobs["echo"].defer({"n": 1})
        waiting = jobs["echo"].defer({"n": 2}, depends_on=[first])  # re-checked by a function
        keyed = jobs["limited"].defer({"n": 3}, unique_key="k", resource_key="printer")
        assert jobs["limited"].defer({"n": 4}, unique_key="k").id == keyed.id  # dedup
        many = jobs["flaky"].defer_many([{"n": 5}, {"n": 6}])
        assert len(many) == 2
        assert first.status() == "available"
        assert waiting.status() == "waiting"

        others = define(other)
        theirs = others["echo"].defer({"secret": 1})
        # The unique key is shared by every producer, the rows are not: the
        # holder's handle comes back, its status stays unreadable.
        held = others["limited"].defer({"n": 7}, unique_key="k")
        assert held.id == keyed.id and held.deduplicated
        with pytest.raises(UnknownJobError):
            held.status()
        with pytest.raises(UnknownJobError, match=str(first.id)):
            others["echo"].defer({"n": 8}, depends_on=[first])  # another's job: unknown
        with pytest.raises(UnknownJobError):
            JobHandle(theirs.id, producer).status()
        assert theirs.status() == "available"

        # The management API is not the producer's.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            producer.jobs.delete(first.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            producer.jobs.cancel(first.id)

    s = roles.schema
    with roles.connect("producer") as conn:
        assert count(conn, "SELECT count(*) FROM {s}.job", s) == 5  # its own five
        row = conn.execute(f'SELECT created_by FROM "{s}".job WHERE id = %s', [first.id])
        assert row.fetchone() == (roles.login["producer"],)
        assert (
            conn.execute(f'SELECT payload FROM "{s}".job WHERE id = %s', [theirs.id]).fetchall()
            == []
        )


def test_a_producer_can_neither_release_nor_rewrite_nor_reconfigure(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """Every write a producer could try beyond inserting its jobs is refused and changes nothing."""
    roles.add_login(admin, "producer2", "producer")
    with roles.config("producer") as producer, roles.config("producer2") as other:
        jobs = define(producer)
        first = jobs["echo"].defer({"n": 1})
        waiting = jobs["echo"].defer({"n": 2}, depends_on=[first])
        limited = jobs["limited"].defer({"n": 3})
        theirs = define(other)["echo"].defer({"n": 4})
    s = roles.schema
    move_to_history(admin, s, theirs.id, "succeeded", result=Jsonb("ok"))
    before = snapshot(admin, s)
    assert [row["limited"] for row in before["job"] if row["id"] == limited.id] == [True]

    with roles.connect("producer") as conn:
        # Jobs: no UPDATE, no DELETE, of any column or row.
        denied(conn, f"UPDATE {{s}}.job SET status = 'available' WHERE id = {waiting.id}", s)
        denied(conn, f"UPDATE {{s}}.job SET limited = false WHERE id = {limited.id}", s)
        denied(conn, """UPDATE {s}.job SET result = '"forged"'""", s)
        denied(conn, """UPDATE {s}.job SET payload = '{"n": 0}'""", s)
        denied(conn, "UPDATE {s}.job SET attempt = 0, locked_until = now()", s)
        denied(conn, "UPDATE {s}.job SET created_by = current_user", s)
        denied(conn, "SELECT id FROM {s}.job FOR KEY SHARE", s)
        denied(conn, "DELETE FROM {s}.job", s)
        denied(conn, "TRUNCATE {s}.job", s)
        # Nor out of its rate limit at insert time.
        refused_by_policy(
            conn,
            "INSERT INTO {s}.job (definition, channel, payload, max_attempts, limited)"
            " VALUES ('limited', '_default', '{}', 1, false)",
            s,
        )
        # Another role's jobs are not there to read, finished ones neither.
        for table in ("job", "job_history"):
            assert (
                conn.execute(
                    f'SELECT payload, result FROM "{s}".{table} WHERE id = %s', [theirs.id]
                ).fetchall()
                == []
            )
        # The history: read only, and only through its parent.
        denied(conn, """UPDATE {s}.job_history SET result = '"forged"'""", s)
        denied(conn, "DELETE FROM {s}.job_history", s)
        denied(conn, "SELECT id FROM {s}.job_history FOR UPDATE", s)
        denied(
            conn,
            "INSERT INTO {s}.job_history (id, definition, channel, status, priority, payload,"
            " attempt, max_attempts, run_at, created_at, finalized_at)"
            f" SELECT {first.id}, 'echo', '_default', 'succeeded', 0, '{{}}', 1, 1, now(), now(),"
            " now()",
            s,
        )
        denied(conn, "SELECT * FROM {s}.job_history_default", s)
        denied(conn, "SELECT * FROM {s}.job_history_0", s)
        denied(conn, "SELECT {s}.job_history_prepare(0, 10000000, 1000000)", s)
        denied(conn, "SELECT * FROM {s}.job_history_drop_before(now(), 10)", s)
        # A finished job cannot come back with its id.
        denied(
            conn,
            "INSERT INTO {s}.job (id, definition, channel, payload, max_attempts, limited)"
            f" OVERRIDING SYSTEM VALUE VALUES ({theirs.id}, 'echo', '_default', '{{}}', 1, false)",
            s,
        )
        # Dependencies: not readable, and only on its own jobs.
        denied(conn, "SELECT * FROM {s}.job_dependency", s)
        refused_by_policy(
            conn,
            f"INSERT INTO {{s}}.job_dependency (job_id, required_job_id)"
            f" VALUES ({theirs.id}, {first.id})",
            s,
        )
        # The re-check releases a waiting job only once its dependencies succeeded.
        row = conn.execute(
            f'SELECT "{s}".job_recheck_waiting(%s, %s)', [waiting.id, "nobody"]
        ).fetchone()
        assert row == (0,)
        denied(conn, f"SELECT {{s}}.job_dependencies_met({waiting.id})", s)
        # Definitions: the settings of an existing one are out of reach.
        denied(conn, "UPDATE {s}.job_definition SET lock_interval_ms = 0", s)
        denied(
            conn, "UPDATE {s}.job_definition SET max_concurrency = NULL, release_interval_ms = 0", s
        )
        denied(conn, "UPDATE {s}.job_definition SET last_released_at = now()", s)
        denied(conn, "DELETE FROM {s}.job_definition", s)
        denied(
            conn,
            "INSERT INTO {s}.job_definition (name, channel, num_attempts, backoff, backoff_base_ms,"
            " backoff_max_ms, priority, lock_interval_ms, timeout_interval_ms)"
            " VALUES ('echo', '_default', 1, 'none', 0, 0, 0, 0, 0)"
            " ON CONFLICT (name) DO UPDATE SET lock_interval_ms = 0",
            s,
        )
        # What defer writes leaves an existing definition's settings alone.
        params = jobs["limited"].row_params()
        params.update(lock_interval_ms=0, max_concurrency=None, release_interval_ms=0)
        conn.execute(producer.queries["definition_ensure"], params)
        # The daemons' tables.
        denied(conn, "SELECT * FROM {s}.job_attempt", s)
        denied(conn, "SELECT * FROM {s}.worker", s)
        denied(conn, "SELECT * FROM {s}.leader", s)
        denied(conn, "INSERT INTO {s}.job_attempt (job_id, attempt, started_at, outcome)"
               " VALUES (1, 1, now(), 'succeeded')", s)  # fmt: skip

    after = snapshot(admin, s)
    # definition_ensure refreshed the heartbeat of `limited`, and nothing else.
    for row in [*before["job_definition"], *after["job_definition"]]:
        row.pop("last_heartbeat_at")
    assert after == before

    # Once its dependency succeeded, the re-check that defer runs releases the job.
    move_to_history(admin, s, first.id, "succeeded")
    with roles.connect("producer") as conn:
        row = conn.execute(
            f'SELECT "{s}".job_recheck_waiting(%s, %s)', [waiting.id, "nobody"]
        ).fetchone()
        assert row == (1,)
    assert count(admin, f"SELECT count(*) FROM {{s}}.job WHERE id = {waiting.id}"
                        " AND status = 'available'", s) == 1  # fmt: skip


def test_a_producer_reads_its_finished_result_and_no_one_elses(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """In job_history (which keeps created_by), a job's result is still its producer's alone."""
    roles.add_login(admin, "producer2", "producer")
    s = roles.schema
    with roles.config("producer") as producer, roles.config("producer2") as other:
        mine = define(producer)["echo"].defer({"n": 1})
        theirs = define(other)["echo"].defer({"n": 2})
        # The second lands in the default partition: the policies are the parent's.
        admin.execute(f"SELECT setval('\"{s}\".job_id_seq', 50000000)")
        later = define(producer)["echo"].defer({"n": 3})
        for handle in (mine, theirs, later):
            move_to_history(admin, s, handle.id, "succeeded", attempt=1, result=Jsonb(handle.id))
        assert mine.result(timeout=10) == mine.id
        assert later.result(timeout=10) == later.id
        assert theirs.result(timeout=10) == theirs.id
        assert mine.status() == "succeeded"
        with pytest.raises(UnknownJobError):
            JobHandle(theirs.id, producer).result(timeout=10)
        with pytest.raises(UnknownJobError):
            JobHandle(mine.id, other).status()
        # Nor may another producer depend on it.
        with pytest.raises(UnknownJobError, match=str(mine.id)):
            define(other)["echo"].defer({"n": 4}, depends_on=[mine])
    with roles.connect("producer") as conn:
        assert count(conn, "SELECT count(*) FROM {s}.job_history", s) == 2
    rows = admin.execute(f'SELECT id, created_by FROM "{s}".job_history ORDER BY id').fetchall()
    assert rows == [
        (mine.id, roles.login["producer"]),
        (theirs.id, roles.login["producer2"]),
        (later.id, roles.login["producer"]),
    ]


def test_a_worker_runs_jobs_end_to_end(roles: Roles) -> None:
    """A real Worker logged in as the worker role claims, runs, retries and finishes jobs."""
    recorder = EventRecorder()
    succeeded: list[int] = []
    with roles.config("producer") as producer, roles.config("worker") as worker_config:
        jobs = define(producer)
        define(worker_config, succeeded)
        first = jobs["echo"].defer({"n": 1})
        second = jobs["echo"].defer({"n": 2}, depends_on=[first])
        limited = jobs["limited"].defer({"n": 3}, resource_key="printer")
        flaky = jobs["flaky"].defer({"n": 4})
        batch = jobs["echo"].defer_many([{"n": 5}, {"n": 6}])

        worker = Worker(
            worker_config, concurrency=4, heartbeat_interval_ms=50, event_handler=recorder
        )
        worker.start()
        try:
            assert second.result(timeout=30) == {"echo": {"n": 2}}  # released by the finish
            assert limited.result(timeout=30) == {"echo": {"n": 3}}  # guarded claim path
            assert flaky.result(timeout=30) == 2  # failed once, retried
            assert [h.result(timeout=30) for h in batch] == [{"echo": {"n": 5}}, {"echo": {"n": 6}}]
            wait_until(lambda: worker.stats.heartbeat_queries >= 2, message="no heartbeat")
            wait_until(lambda: succeeded == [flaky.id], message="on_success not called")
        finally:
            worker.stop()
            worker.join(timeout=30)
        assert first.status() == "succeeded"

    assert recorder.of_type(events.DaemonDatabaseError) == []
    with roles.connect("worker") as conn:
        s = roles.schema
        # Every job moved into the history, the failed attempt of `flaky` with it.
        assert count(conn, "SELECT count(*) FROM {s}.job", s) == 0
        assert count(conn, "SELECT count(*) FROM {s}.job_attempt", s) == 0
        assert count(conn, "SELECT count(*) FROM {s}.job_history WHERE worker_id IS NOT NULL"
                           " AND status = 'succeeded'", s) == 6  # fmt: skip
        row = conn.execute(
            f'SELECT attempt, attempts FROM "{s}".job_history WHERE id = %s', [flaky.id]
        ).fetchone()
        assert row is not None and row[0] == 2
        assert [entry["outcome"] for entry in row[1]] == ["failed"]
        assert count(conn, "SELECT count(*) FROM {s}.worker", s) == 0  # deregistered
        denied(conn, """UPDATE {s}.job SET payload = '{"n": 0}'""", s)
        denied(conn, """UPDATE {s}.job_history SET result = '"forged"'""", s)
        denied(conn, "DELETE FROM {s}.job_history", s)
        denied(conn, "DELETE FROM {s}.job_definition", s)
        denied(
            conn, "INSERT INTO {s}.leader (name, holder, expires_at) VALUES ('x', 'y', now())", s
        )


def token(rows: dict[str, list[Any]], job_id: int) -> str:
    """The lock token of ``job_id`` in a :func:`snapshot`."""
    (found,) = [row["lock_token"] for row in rows["job"] if row["id"] == job_id]
    return str(found)


def finish(
    conn: psycopg.Connection[Any],
    config: Config,
    worker_id: int,
    job_id: int,
    lock_token: str,
    result: str,
    attempt: int = 1,
) -> list[int]:
    """Record the success of ``attempt`` of ``job_id`` with job_finish_many; the ids it finished."""
    rows = conn.execute(
        config.queries["job_finish_many"],
        {
            "ids": [job_id], "attempts": [attempt], "tokens": [uuid.UUID(lock_token)],
            "outcomes": ["succeeded"], "results": [result], "errors": [None],
            "tracebacks": [None], "retry_delays_ms": [0],
            "started_ats": [dt.datetime.now(dt.UTC)], "progresses": [None], "worker_id": worker_id,
            "worker_name": "test", "notify_channel": "nobody", "finished_channel": "nobody",
        },
    ).fetchall()  # fmt: skip
    return [int(r[0]) for r in rows]


def register(conn: psycopg.Connection[Any], schema: str, name: str) -> int:
    """Insert a `worker` row as the role of ``conn``, its secret being its name; return its id."""
    row = conn.execute(
        f'INSERT INTO "{schema}".worker (name, role, host, pid, secret_hash)'
        " VALUES (%s, %s, %s, %s, sha256(convert_to(%s, 'UTF8'))) RETURNING id",
        [name, "worker", "test-host", 1, name],
    ).fetchone()
    assert row is not None
    return int(row[0])


#: A history row for job {id} copied from its row in `job` ({s} is the schema),
#: as job_finish_many writes it, with ``{changes}`` (SQL select items) overriding
#: columns of the copy.
FORGED_HISTORY = """
INSERT INTO {s}.job_history (
    id, definition, channel, status, priority, payload, result, attempt, max_attempts, run_at,
    unique_key, resource_key, tick_at, created_at, started_at, finalized_at, last_error,
    attempts, trace_context, created_by, worker_id, worker_name, lock_token)
SELECT id, definition, channel, {status}, priority, {payload}, '"forged"', attempt, max_attempts,
       run_at, unique_key, resource_key, tick_at, created_at, started_at, now(), NULL, '[]',
       trace_context, {created_by}, locked_by, 'forger', {lock_token}
FROM {s}.job WHERE id = {id}
"""


def forge_history(job_id: int, **changes: str) -> str:
    """:data:`FORGED_HISTORY` for ``job_id``: a `succeeded` copy unless ``changes`` say otherwise."""
    items = {
        "status": "'succeeded'",
        "payload": "payload",
        "created_by": "created_by",
        "lock_token": "lock_token",
        **changes,
    }
    return FORGED_HISTORY.replace("{id}", str(job_id)).format(s="{s}", **items)


def test_a_worker_changes_only_unclaimed_ready_or_held_jobs(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """A worker cannot rewrite a finished job, touch another role's running job or worker row,
    nor release a job before its dependencies; it moves into the history only the jobs its
    own daemons hold, as they are; the state machine's own moves still work."""
    roles.add_login(admin, "worker2", "worker")
    s = roles.schema
    with roles.config("producer") as producer:
        jobs = define(producer)
        done = jobs["echo"].defer({"n": 1})
        theirs = jobs["echo"].defer({"n": 2})
        mine = jobs["echo"].defer({"n": 3})
        blocked = jobs["echo"].defer({"n": 4}, depends_on=[theirs])
        ready = jobs["echo"].defer({"n": 5}, depends_on=[mine])
        free = jobs["echo"].defer({"n": 6})
    with roles.connect("worker") as conn, roles.connect("worker2") as conn2:
        me = register(conn, s, "me")
        sibling = register(conn, s, "sibling")
        rival = register(conn2, s, "rival")
        # The states a worker finds, set up as the server's superuser: a
        # finished job, and two jobs running their second attempt (the first
        # one failed), one held by a daemon of another role.
        move_to_history(admin, s, done.id, "succeeded", attempt=1, result=Jsonb("real"))
        admin.execute(
            f"""UPDATE "{s}".job SET status = 'running', attempt = 2, started_at = now(),
                    locked_until = now() + interval '1 hour',
                    locked_by = CASE id WHEN %s THEN %s ELSE %s END,
                    lock_token = md5(id::text)::uuid
                WHERE id IN (%s, %s)""",
            [theirs.id, rival, me, theirs.id, mine.id],
        )
        admin.execute(
            f'INSERT INTO "{s}".job_attempt (job_id, attempt, started_at, outcome, error)'
            " SELECT id, 1, now(), 'failed', 'first' FROM unnest(%s::bigint[]) AS id",
            [[theirs.id, mine.id]],
        )
        before = snapshot(admin, s)

        # A finished job: its result cannot be overwritten, nor the job revived.
        denied(conn, f"""UPDATE {{s}}.job_history SET result = '"forged"'"""
                     f" WHERE id = {done.id}", s)  # fmt: skip
        denied(conn, f"DELETE FROM {{s}}.job_history WHERE id = {done.id}", s)
        denied(conn, "SELECT id FROM {s}.job_history FOR UPDATE", s)
        denied(
            conn,
            "INSERT INTO {s}.job (id, definition, channel, payload, max_attempts, limited)"
            f" OVERRIDING SYSTEM VALUE VALUES ({done.id}, 'echo', '_default', '{{}}', 1, false)",
            s,
        )
        # Nor any partition of the history, named directly.
        denied(conn, "SELECT * FROM {s}.job_history_default", s)
        denied(conn, f"""UPDATE {{s}}.job_history_0 SET result = '"forged"'"""
                     f" WHERE id = {done.id}", s)  # fmt: skip
        denied(conn, "SELECT {s}.job_history_prepare(0, 10000000, 1000000)", s)
        denied(conn, "SELECT * FROM {s}.job_history_drop_before(now(), 10)", s)
        # Another role's running job: no lease, no finish, even with its token;
        # it is neither deleted nor moved into the history, and keeps its log.
        assert changed(conn, f"UPDATE {{s}}.job SET locked_until = now() + interval '1 day'"
                             f" WHERE id = {theirs.id}", s) == 0  # fmt: skip
        assert finish(conn, producer, me, theirs.id, token(before, theirs.id), '"forged"', 2) == []
        assert changed(conn, f"DELETE FROM {{s}}.job WHERE id = {theirs.id}", s) == 0
        assert changed(conn, f"DELETE FROM {{s}}.job_attempt WHERE job_id = {theirs.id}", s) == 0
        refused_by_policy(conn, forge_history(theirs.id), s)
        # Nor any job that its daemons do not hold: unclaimed, waiting.
        assert changed(conn, f"DELETE FROM {{s}}.job WHERE id <> {mine.id}", s) == 0
        assert changed(conn, f"DELETE FROM {{s}}.job_attempt WHERE job_id <> {mine.id}", s) == 0
        refused_by_policy(conn, forge_history(free.id), s)
        refused_by_policy(conn, forge_history(blocked.id), s)
        # Its own running job goes into the history only as it is: not with
        # another payload or creator, nor another attempt's token, nor cancelled.
        refused_by_policy(conn, forge_history(mine.id, payload="""'{"n": 0}'"""), s)
        refused_by_policy(conn, forge_history(mine.id, created_by="NULL"), s)
        refused_by_policy(conn, forge_history(mine.id, lock_token="gen_random_uuid()"), s)
        refused_by_policy(conn, forge_history(mine.id, status="'cancelled'"), s)
        # A waiting job whose dependency has not succeeded stays waiting.
        assert (
            changed(conn, f"UPDATE {{s}}.job SET status = 'available' WHERE id = {blocked.id}", s)
            == 0
        )
        # Cancelling is an operator's action.
        refused_by_policy(conn, f"UPDATE {{s}}.job SET status = 'cancelled'"
                                f" WHERE id = {free.id}", s)  # fmt: skip
        # Dependencies only on its own jobs (these are the producer's).
        refused_by_policy(
            conn,
            f"INSERT INTO {{s}}.job_dependency (job_id, required_job_id)"
            f" VALUES ({free.id}, {theirs.id})",
            s,
        )
        # Daemon rows: no UPDATE or DELETE at all; another role's are not even
        # seen; a daemon's heartbeat and deregistration want its secret, so
        # neither another role's daemon nor a sibling of the same role can be
        # kept alive or removed.
        denied(conn, f"DELETE FROM {{s}}.worker WHERE id = {rival}", s)
        denied(conn, f"UPDATE {{s}}.worker SET heartbeat_at = now() WHERE id = {rival}", s)
        assert count(conn, "SELECT count(*) FROM {s}.worker", s) == 2  # "me" and "sibling"
        queries = producer.queries
        for victim, guess in [(rival, "me"), (sibling, "me"), (sibling, "")]:
            touch = {"worker_id": victim, "secret": guess}
            assert conn.execute(queries["worker_touch"], touch).fetchone() == (False,)
            assert conn.execute(queries["worker_delete"], touch).fetchone() == (False,)
        denied(conn, """UPDATE {s}.job SET payload = '{"n": 0}'""", s)
        denied(conn, "UPDATE {s}.job SET created_by = current_user", s)
        denied(conn, "UPDATE {s}.job SET result = '1', finalized_at = now()", s)
        denied(conn, "UPDATE {s}.worker SET registered_by = current_user", s)
        denied(conn, "DELETE FROM {s}.job_definition", s)
        denied(conn, "UPDATE {s}.job_attempt SET error = 'rewritten'", s)
        denied(conn, "DELETE FROM {s}.job_dependency", s)
        assert snapshot(admin, s) == before

        # The moves of the state machine: heartbeat and finish its own running
        # job (into the history, with the log of its first attempt), release a
        # ready dependent, claim an available job.
        row = conn.execute(
            queries["worker_heartbeat"],
            {"worker_id": me, "secret": "me", "ids": [mine.id], "tokens": [token(before, mine.id)]},
        ).fetchone()
        assert row == (True, 1, [], [])  # alive, one lease extended, none cancelled
        assert finish(conn, producer, me, mine.id, token(before, mine.id), "1", 2) == [mine.id]
        released = conn.execute(
            queries["job_release_dependents"], {"ids": [mine.id], "notify_channel": "nobody"}
        ).fetchall()
        assert [r[0] for r in released] == [ready.id]
        claimed = conn.execute(
            queries["job_claim"],
            {"channels": ["_default"], "now": None, "limit": 10, "worker_id": me,
             "claim_id": "00000000-0000-0000-0000-000000000001"},
        ).fetchall()  # fmt: skip
        assert sorted(r[0] for r in claimed) == sorted([ready.id, free.id])
        # Its own row, with its secret, it may delete.
        deregister = {"worker_id": me, "secret": "me"}
        assert conn.execute(queries["worker_delete"], deregister).fetchone() == (True,)
        assert count(admin, "SELECT count(*) FROM {s}.worker", s) == 2  # sibling and rival
    row = admin.execute(
        f'SELECT status, worker_id, attempts FROM "{s}".job_history WHERE id = %s', [mine.id]
    ).fetchone()
    assert row is not None and row[:2] == ("succeeded", me)
    assert [(entry["attempt"], entry["error"]) for entry in row[2]] == [(1, "first")]
    assert count(admin, f"SELECT count(*) FROM {{s}}.job_attempt WHERE job_id = {theirs.id}",
                 s) == 1  # fmt: skip
    with roles.connect("producer") as conn:
        assert conn.execute(
            f'SELECT result FROM "{s}".job_history WHERE id = %s', [mine.id]
        ).fetchone() == (1,)


def test_the_orchestrator_runs_its_maintenance(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """A real Orchestrator as the orchestrator role: lease, ticks, rescue, timeouts, sweep."""
    s = roles.schema
    with roles.config("producer") as producer:
        jobs = define(producer)
        lost = jobs["short"].defer({"n": 1})  # its lease expires
        orphan = jobs["short"].defer({"n": 2})  # its worker stops heartbeating
        jobs["short"].defer({"n": 3})  # times out
    # A dead worker and two running jobs, as the server's superuser.
    row = admin.execute(
        f'INSERT INTO "{s}".worker (name, role, host, pid, heartbeat_at)'
        " VALUES ('dead', 'worker', 'nowhere', 1, now() - interval '1 hour') RETURNING id"
    ).fetchone()
    assert row is not None
    admin.execute(
        f"UPDATE \"{s}\".job SET status = 'running', attempt = 1, lock_token = gen_random_uuid(),"
        " started_at = now(), locked_by = %s,"
        " locked_until = CASE WHEN id = %s THEN now() - interval '1 s' ELSE now() + interval '1 h' END"
        " WHERE id = ANY(%s)",
        [row[0], lost.id, [lost.id, orphan.id]],
    )

    recorder = EventRecorder()
    with roles.config("orchestrator") as config:
        # Every second: a new definition first runs at its first tick after it is seen.
        tick = JobDefinition(config, name="tick", job_function=echo, repeat_interval_ms=1_000)
        define(config)
        orchestrator = Orchestrator(config, event_handler=recorder, archive=True)
        orchestrator.start()
        try:
            wait_until(
                lambda: (
                    (
                        all(n >= 1 for n in orchestrator.passes.values())
                        and recorder.of_type(events.OrchestratorJobScheduled)
                    )
                    or recorder.of_type(events.OrchestratorServiceFailed)
                ),
                timeout=30,
                message="the orchestrator did not run every service and schedule a tick",
            )
        finally:
            orchestrator.stop()
            orchestrator.join(timeout=30)
        assert recorder.of_type(events.OrchestratorServiceFailed) == []
        assert recorder.of_type(events.OrchestratorLeadershipAcquired)
        assert {e.job_id for e in recorder.of_type(events.OrchestratorJobRescued)} == {
            lost.id,
            orphan.id,
        }
        assert {e.definition for e in recorder.of_type(events.OrchestratorJobScheduled)} == {
            tick.name
        }

        # Time out everything a day later: into the history, which keeps it
        # (archive=True, no retention).
        with roles.connect("orchestrator") as conn:
            now_row = conn.execute("SELECT now()").fetchone()
            assert now_row is not None
            now: dt.datetime = now_row[0]
            by_name = {service.name: service for service in orchestrator.services}
            finalized = by_name["finalizer"].run_once(conn, now + dt.timedelta(days=1))
            assert sum(finalized.counts.values()) >= 4  # three `short` jobs and the tick
            assert count(conn, "SELECT count(*) FROM {s}.job", s) == 0
            assert count(conn, "SELECT count(*) FROM {s}.job_attempt", s) == 0  # moved along
            finished = count(conn, "SELECT count(*) FROM {s}.job_history", s)
            assert finished >= 4
            # Leftovers of a job deleted while unfinished, as the server's superuser.
            admin.execute(
                f'INSERT INTO "{s}".job_attempt (job_id, attempt, started_at, outcome)'
                " VALUES (999999, 1, now(), 'failed')"
            )
            admin.execute(
                f'INSERT INTO "{s}".job_dependency (job_id, required_job_id) VALUES (999999, %s)',
                [lost.id],
            )
            sweeper = by_name["sweeper"]
            assert isinstance(sweeper, Sweeper)
            swept = sweeper.run_once(conn, now + dt.timedelta(days=3))
            assert swept.counts["orphan_attempts_deleted"] == 1
            assert swept.counts["orphan_dependencies_deleted"] == 1
            assert count(conn, "SELECT count(*) FROM {s}.job_history", s) == finished
            assert count(conn, "SELECT count(*) FROM {s}.worker", s) == 0
            # The history's partitions are the owner's to make and drop, its rows
            # are not rewritten, and its partitions not reached by name.
            denied(conn, "DROP TABLE {s}.job_history_0", s)
            denied(conn, "CREATE TABLE {s}.job_history_9000000 PARTITION OF {s}.job_history"
                         " FOR VALUES FROM (9000000) TO (10000000)", s)  # fmt: skip
            denied(conn, """UPDATE {s}.job_history SET result = '"forged"'""", s)
            denied(conn, "SELECT count(*) FROM {s}.job_history_0", s)

            # Retention, a job of the default partition at a time: as the
            # server's superuser, a job finished long ago with an id beyond the
            # partitions, and an edge of it.
            admin.execute(
                f"""INSERT INTO "{s}".job_history (id, definition, channel, status, priority,
                        payload, attempt, max_attempts, run_at, created_at, finalized_at)
                    VALUES (9000000, 'short', '_default', 'succeeded', 0, '{{}}', 1, 2,
                            now(), now(), now() - interval '10 days')"""
            )
            admin.execute(
                f'INSERT INTO "{s}".job_dependency (job_id, required_job_id) VALUES (9000000, %s)',
                [lost.id],
            )
            assert conn.execute(
                config.queries["job_history_default_prune"],
                {"now": None, "retention_ms": 24 * 3_600_000, "limit": 10},
            ).fetchall() == [(9000000, "short")]
            assert count(admin, "SELECT count(*) FROM {s}.job_dependency", s) == 0
            # Retention, whole partitions at a time, once the ids have moved
            # past them (as the server's superuser).
            admin.execute(f"SELECT setval('\"{s}\".job_id_seq', 2500000)")
            sweeper.archive_retention_ms = 24 * 3_600_000
            pruned = sweeper.run_once(conn, now + dt.timedelta(days=5))
            assert pruned.counts["history_partitions_dropped"] >= 1
            assert pruned.counts["history_jobs_dropped"] == finished
            assert count(conn, "SELECT count(*) FROM {s}.job_history", s) == 0


def test_the_dashboard_reads_everything_and_writes_nothing(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """The dashboard role: every table and the read API; no write, not even a defer."""
    s = roles.schema
    with roles.config("producer") as producer:
        handle = define(producer)["echo"].defer({"n": 1})
        done = define(producer)["echo"].defer({"n": 2})
    move_to_history(admin, s, done.id, "succeeded", attempt=1, result=Jsonb("ok"))
    with roles.config("dashboard") as dashboard:
        assert [job.id for job in dashboard.jobs.list()] == [handle.id, done.id]
        assert dashboard.jobs.get(handle.id).payload == {"n": 1}
        assert dashboard.jobs.get(done.id).result == "ok"
        assert dashboard.jobs.count(status="available") == 1
        assert dashboard.jobs.count(status="succeeded") == 1
        assert [info.name for info in dashboard.jobs.definitions()] == ["echo"]
        dashboard.check_schema()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dashboard.jobs.cancel(handle.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dashboard.jobs.retry(done.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dashboard.jobs.delete(done.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dashboard.jobs.retry_failed()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            define(dashboard)["echo"].defer({"n": 2})
    with roles.connect("dashboard") as conn:
        for table in TABLES:
            conn.execute(f'SELECT * FROM "{s}".{table} LIMIT 1')
        denied(conn, "SELECT * FROM {s}.job_history_default", s)
        denied(conn, "DELETE FROM {s}.job", s)
        denied(conn, "UPDATE {s}.job SET priority = 1", s)
        denied(conn, "DELETE FROM {s}.job_history", s)
        denied(
            conn, "INSERT INTO {s}.leader (name, holder, expires_at) VALUES ('x', 'y', now())", s
        )
        denied(conn, "UPDATE {s}.worker SET heartbeat_at = now()", s)
        denied(conn, "DELETE FROM {s}.job_definition", s)
    assert count(admin, "SELECT count(*) FROM {s}.job", s) == 1
    assert count(admin, "SELECT count(*) FROM {s}.job_history", s) == 1


def test_the_operator_retries_cancels_and_deletes_jobs(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """The operator role: the management API, between the hot table and the history."""
    s = roles.schema
    with roles.config("producer") as producer:
        jobs = define(producer)
        failed = jobs["flaky"].defer({"n": 1})
        succeeded = jobs["echo"].defer({"n": 2})
        running = jobs["echo"].defer({"n": 3})
        dependent = jobs["echo"].defer({"n": 4}, depends_on=[succeeded])
        doomed = [jobs["flaky"].defer({"n": n}) for n in (5, 6, 7)]
    move_to_history(
        admin, s, failed.id, "failed", attempt=2, last_error="second",
        attempts=Jsonb([{"attempt": 1, "outcome": "failed", "error": "first"}]),
    )  # fmt: skip
    move_to_history(admin, s, succeeded.id, "succeeded", attempt=1, result=Jsonb("ok"))
    for handle in doomed:
        move_to_history(admin, s, handle.id, "failed", attempt=2)
    with roles.connect("worker") as conn:
        worker_id = register(conn, s, "w")
    admin.execute(
        f"""UPDATE "{s}".job SET status = 'running', attempt = 1, started_at = now(),
                locked_by = %s, lock_token = gen_random_uuid(),
                locked_until = now() + interval '1 hour'
            WHERE id = %s""",
        [worker_id, running.id],
    )

    with roles.config("operator") as operator:
        # A finished job comes back with its id and its attempt log.
        retried = operator.jobs.retry(failed.id)
        # Attempt numbers go on after a retry by hand; the budget grows instead.
        assert (retried.id, retried.status, retried.attempt) == (failed.id, "available", 2)
        assert [a.error for a in operator.jobs.get(failed.id).attempts or ()] == ["first"]
        # A running job is cancelled into the history; its attempt is logged there.
        cancelled = operator.jobs.cancel(running.id)
        assert cancelled.status == "cancelled"
        attempts = operator.jobs.get(running.id).attempts or ()
        assert [a.outcome for a in attempts] == ["cancelled"]
        # A waiting job is deleted with its edge; the succeeded job it waited
        # for comes back into the hot table, and is deleted from there (its
        # restored attempt log with it); a cancelled one from the history.
        operator.jobs.delete(dependent.id)
        assert operator.jobs.retry(succeeded.id).status == "available"
        operator.jobs.delete(succeeded.id)
        operator.jobs.delete(running.id)  # from the history
        assert operator.jobs.retry_failed() == 3
        assert operator.jobs.delete_failed() == 0
        for handle in doomed:
            operator.jobs.cancel(handle.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            define(operator)["echo"].defer({"n": 8})
    with roles.connect("producer") as conn:  # the retried job is still its producer's
        assert count(conn, f"SELECT count(*) FROM {{s}}.job WHERE id = {failed.id}", s) == 1
    assert count(admin, "SELECT count(*) FROM {s}.job", s) == 1
    assert count(admin, "SELECT count(*) FROM {s}.job_history WHERE status = 'cancelled'", s) == 3
    assert count(admin, "SELECT count(*) FROM {s}.job_dependency", s) == 0
    with roles.connect("operator") as conn:
        denied(conn, """UPDATE {s}.job SET payload = '{"n": 0}'""", s)
        denied(conn, "UPDATE {s}.job SET created_by = current_user", s)
        denied(conn, "UPDATE {s}.worker SET heartbeat_at = now()", s)
        denied(conn, "DELETE FROM {s}.worker", s)
        denied(conn, "DELETE FROM {s}.job_definition", s)
        denied(
            conn, "INSERT INTO {s}.leader (name, holder, expires_at) VALUES ('x', 'y', now())", s
        )
        denied(conn, "SELECT * FROM {s}.job_history_default", s)
        denied(conn, "SELECT {s}.job_history_prepare(0, 10000000, 1000000)", s)
        denied(conn, "SELECT * FROM {s}.job_history_drop_before(now(), 10)", s)


def test_the_history_is_reached_through_its_parent_only(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """A partition made after roles.sql ran (by the orchestrator's sweeper) leaks no row.

    job_history_prepare makes partitions as the migrator, so they start with
    the migrator's default privileges; through the parent only the parent's
    privileges and policies count, and named directly a partition shows and
    lets change no row to any runtime role.
    """
    roles.add_login(admin, "producer2", "producer")
    s = roles.schema
    with roles.config("producer") as producer, roles.config("producer2") as other:
        early = define(producer)["echo"].defer({"n": 1})
        admin.execute(f"SELECT setval('\"{s}\".job_id_seq', 7499999)")
        late = define(producer)["echo"].defer({"n": 2})
        theirs = define(other)["echo"].defer({"n": 3})
    assert late.id == 7500000
    for handle in (early, late, theirs):
        move_to_history(admin, s, handle.id, "succeeded", attempt=1, result=Jsonb("secret"))
    with roles.config("orchestrator") as orchestrator, roles.connect("orchestrator") as conn:
        made = conn.execute(orchestrator.queries["job_history_prepare"]).fetchone()
        assert made is not None and made[0] == 3  # 7M, 8M and 9M; late moves into 7M
    partition = "job_history_7000000"
    owner = admin.execute(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass",
        [f'"{s}".{partition}'],
    ).fetchone()
    assert owner == (roles.group["migrator"],)
    assert count(admin, f"SELECT count(*) FROM {{s}}.{partition}", s) == 2

    with roles.connect("producer") as conn:
        ids = conn.execute(f'SELECT id FROM "{s}".job_history ORDER BY id').fetchall()
        assert ids == [(early.id,), (late.id,)]  # through the parent: its own two
    for name in GROUPS[1:]:
        with roles.connect(name) as conn:
            for statement in (
                f"SELECT * FROM {{s}}.{partition}",
                f"""UPDATE {{s}}.{partition} SET result = '"forged"'""",
                f"DELETE FROM {{s}}.{partition}",
            ):
                # Refused outright (no privilege), or no row to see (row security).
                with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                    assert changed(conn, statement, s) == 0, (name, statement)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    f'INSERT INTO "{s}".{partition} (id, definition, channel, status, priority,'
                    " payload, attempt, max_attempts, run_at, created_at, finalized_at)"
                    " VALUES (7600000, 'echo', '_default', 'succeeded', 0, '{}', 1, 1, now(),"
                    " now(), now())"
                )
    assert count(admin, f"SELECT count(*) FROM {{s}}.{partition} WHERE result = '\"secret\"'",
                 s) == 2  # fmt: skip


def test_the_file_can_run_before_the_first_migration(
    test_dsn: str, unapplied_roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """Bootstrap order: roles.sql, `orchestra migrate` as the migrator, roles.sql again."""
    roles = unapplied_roles
    echoed = roles.apply(admin)
    assert len(echoed) == 1 and "not migrated yet" in echoed[0], echoed
    roles.create_logins(admin)
    with roles.config("migrator") as migrator:
        assert len(migrator.prepare_schema()) >= 3
    assert roles.apply(admin) == []
    assert roles.apply(admin) == []  # idempotent
    with roles.config("producer") as producer:
        handle = define(producer)["echo"].defer({"n": 1})
        assert handle.status() == "available"
    with roles.connect("producer") as conn:
        denied(conn, "DELETE FROM {s}.job", roles.schema)
    owners = admin.execute(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
        " WHERE relnamespace = %s::regnamespace",
        [roles.schema],
    ).fetchall()
    assert owners == [(roles.group["migrator"],)]


# -- psql itself -----------------------------------------------------------------------------

_PRIVILEGES = """
SELECT 'table' AS kind, c.relname AS object, NULL AS column_name,
       pg_get_userbyid(a.grantee) AS grantee, a.privilege_type
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'column', c.relname, att.attname, pg_get_userbyid(a.grantee), a.privilege_type
FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'default', d.defaclobjtype::text, pg_get_userbyid(d.defaclrole),
       pg_get_userbyid(a.grantee), a.privilege_type
FROM pg_default_acl d, aclexplode(d.defaclacl) a
WHERE d.defaclnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'owner', c.relname, NULL, pg_get_userbyid(c.relowner), NULL
FROM pg_class c WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'member', pg_get_userbyid(m.roleid), NULL, pg_get_userbyid(m.member), NULL
FROM pg_auth_members m WHERE pg_get_userbyid(m.member) LIKE %(prefix)s
UNION ALL
SELECT 'function', p.proname, pg_get_userbyid(p.proowner),
       coalesce(pg_get_userbyid(a.grantee), 'PUBLIC'), a.privilege_type
FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
WHERE p.pronamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'policy', c.relname || '.' || pol.polname, pol.polcmd::text,
       array_to_string(ARRAY(SELECT pg_get_userbyid(r) FROM unnest(pol.polroles) r ORDER BY 1),
                       ','),
       coalesce(pg_get_expr(pol.polqual, pol.polrelid), '') || ' / '
       || coalesce(pg_get_expr(pol.polwithcheck, pol.polrelid), '')
FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid
WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'row security', c.relname, NULL, NULL, c.relrowsecurity::text
FROM pg_class c WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p')
"""


def privileges(admin: psycopg.Connection[Any], roles: Roles) -> set[tuple[str, ...]]:
    """Every privilege and owner in the schema, role names made independent of the test."""
    found = admin.execute(
        _PRIVILEGES, {"schema": roles.schema, "prefix": roles.schema + "\\_%"}
    ).fetchall()
    return {
        tuple("" if v is None else str(v).replace(roles.schema, "S") for v in row) for row in found
    }


def test_psql_and_the_python_applier_grant_the_same(
    test_dsn: str, admin: psycopg.Connection[Any], schema: str
) -> None:
    """psql -f roles.sql and apply_psql_script leave identical privileges, owners and policies."""
    results = []
    for suffix, via_psql in (("a", False), ("b", True)):
        name = f"{schema}{suffix}"
        Config(test_dsn, schema=name).prepare_schema()
        roles = Roles(test_dsn, name)
        try:
            if via_psql:
                assert roles.apply_with_psql(admin) == ""  # no notice, no warning
            else:
                roles.apply(admin)
            results.append(privileges(admin, roles))
        finally:
            roles.drop(admin)
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    python_applied, psql_applied = results
    assert python_applied == psql_applied
    assert ("table", "job", "", "S_producer", "DELETE") not in python_applied
    assert not [p for p in python_applied if p[3] == "S_producer" and p[4] == "UPDATE"]
    assert ("table", "job", "", "S_orchestrator", "DELETE") in python_applied
    for table in ("job", "job_history", "job_attempt", "job_dependency", "worker"):
        assert ("row security", table, "", "", "true") in python_applied
    # The history's partitions: row security, and no privilege for anyone but
    # the owner (the orchestrator deletes rows of the default one by name).
    partitions = {p[1] for p in python_applied if p[0] == "row security" and p[1] != "job_history"
                  and p[1].startswith("job_history")}  # fmt: skip
    assert {"job_history_default", "job_history_0"} <= partitions
    for partition in partitions:
        assert ("row security", partition, "", "", "true") in python_applied
        grantees = {p[3] for p in python_applied if p[0] == "table" and p[1] == partition}
        expected = {"S_orchestrator"} if partition == "job_history_default" else set()
        assert grantees == {"S_migrator", *expected}, partition
    assert not [p for p in python_applied if p[1] == "job_history" and p[4] == "UPDATE"
                and p[3] != "S_operator" and p[3] != "S_migrator"]  # fmt: skip
    functions = {p[1] for p in python_applied if p[0] == "function"}
    assert functions == {
        "job_recheck_waiting",
        "job_find_unique",
        "definition_ensure",
        "job_dependencies_met",
        "job_created_by_caller",
        "worker_touch",
        "worker_deregister",
        "job_history_prepare",
        "job_history_drop_before",
        "job_history_partitions",
    }
    assert ("table", "worker", "", "S_worker", "DELETE") not in python_applied
    assert not [p for p in python_applied if p[3] == "S_worker" and p[1:2] == ("worker",)
                and p[4] == "UPDATE"]  # fmt: skip
    for function in functions:  # owned by the migrator, not executable by PUBLIC
        assert ("function", function, "S_migrator", "PUBLIC", "EXECUTE") not in python_applied
    assert ("function", "job_recheck_waiting", "S_migrator", "S_producer", "EXECUTE") in (
        python_applied
    )
    for function in ("job_history_prepare", "job_history_drop_before"):
        grantees = {p[3] for p in python_applied if p[:2] == ("function", function)}
        assert grantees == {"S_migrator", "S_orchestrator"}, function
