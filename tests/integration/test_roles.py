"""The least-privilege roles of ``deploy/sql/roles.sql``, applied to a real schema.

Each test applies the file to a schema of its own, with role names suffixed by
the schema name (roles are cluster-wide, tests run in parallel), logs in as
LOGIN roles that inherit the group roles, and shows what each may and may not
do: a producer defers and reads but cannot delete or rewrite jobs, a worker
runs jobs end to end with a real :class:`Worker`, an orchestrator runs its
maintenance passes, the dashboard reads and cannot write, and the migrator
owns the schema and migrates it.

The file is written for psql (``psql -v schema=... -f roles.sql``). So that
the tests run where psql is not installed (the embedded server), it is
applied by :func:`apply_psql_script`, which understands the few psql
meta-commands the file uses and quotes every variable with psycopg.sql;
:func:`test_psql_and_the_python_applier_grant_the_same` checks both agree
whenever psql is on the PATH.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from orchestra import Config, JobContext, JobDefinition, Orchestrator, Worker, events
from orchestra._orchestrator._sweeper import Sweeper
from orchestra.testing import EventRecorder, wait_until

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql" / "roles.sql"
GROUPS = ("migrator", "producer", "worker", "orchestrator", "dashboard")
PASSWORD = "roles-test-password"
TABLES = (
    "schema_version",
    "job_definition",
    "job",
    "job_attempt",
    "job_dependency",
    "worker",
    "leader",
    "job_archive",
)


# -- a psql subset -------------------------------------------------------------------------

_VARIABLE_RE = re.compile(r"(?<![:\w]):(['\"])([A-Za-z_][A-Za-z0-9_]*)\1")
_DEFINED_RE = re.compile(r"^:\{\?([A-Za-z_][A-Za-z0-9_]*)\}$")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _psql_bool(text: str) -> bool:
    """psql's reading of a boolean: a unique prefix of true/false/yes/no/on/off, or 1/0."""
    value = text.strip().lower()
    truthy = [word for word in _TRUE if word.startswith(value)] if value else []
    falsy = [word for word in _FALSE if word.startswith(value)] if value else []
    if truthy and not falsy:
        return True
    if falsy and not truthy:
        return False
    raise ValueError(f"not a psql boolean: {text!r}")


def _as_psql_text(value: Any) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    return "" if value is None else str(value)


def apply_psql_script(
    conn: psycopg.Connection[Any], script: str, variables: Mapping[str, str]
) -> list[str]:
    """Run a psql script on ``conn`` (autocommit) and return what it ``\\echo``-ed.

    Supports what ``roles.sql`` uses: ``\\set``, ``\\if`` / ``\\else`` / ``\\endif``
    (on ``:{?name}`` and ``:name``), ``\\gset [prefix]`` on a line of its own after
    the query, ``\\echo``, ``--`` comment lines, statements ending a line with
    ``;``, and ``$$`` bodies (never substituted, as in psql). ``:'name'`` becomes
    a literal and ``:"name"`` an identifier, quoted by psycopg.sql. Like psql
    with ON_ERROR_STOP, the first error stops the script (and rolls back an
    open transaction).
    """
    values = dict(variables)
    stack: list[list[bool]] = []  # [parent active, a branch was taken, this branch active]
    buffer: list[str] = []
    echoed: list[str] = []
    in_body = False

    def active() -> bool:
        return all(entry[2] for entry in stack)

    def substitute(line: str) -> str:
        def replace(match: re.Match[str]) -> str:
            quote, name = match.groups()
            if name not in values:
                raise KeyError(f"psql variable {name!r} is not set")
            value = values[name]
            composable = sql.Literal(value) if quote == "'" else sql.Identifier(value)
            return composable.as_string(conn)

        return _VARIABLE_RE.sub(replace, line)

    def run(statement: list[str]) -> psycopg.Cursor[Any]:
        return conn.execute("\n".join(statement).encode())

    def condition(expression: str) -> bool:
        defined = _DEFINED_RE.match(expression)
        if defined:
            return defined.group(1) in values
        if expression.startswith(":") and expression[1:] in values:
            return _psql_bool(values[expression[1:]])
        raise ValueError(f"unsupported \\if expression: {expression!r}")

    try:
        for line in script.splitlines():
            stripped = line.strip()
            if not in_body and stripped.startswith("\\"):
                command, _, argument = stripped[1:].partition(" ")
                argument = argument.strip()
                if command == "if":
                    parent = active()
                    taken = parent and condition(argument)
                    stack.append([parent, taken, taken])
                elif command == "else":
                    parent, taken, _ = stack[-1]
                    stack[-1] = [parent, True, parent and not taken]
                elif command == "endif":
                    stack.pop()
                elif not active():
                    continue
                elif command == "set":
                    name, _, value = argument.partition(" ")
                    values[name] = value.strip()
                elif command == "gset":
                    cursor = run(buffer)
                    buffer = []
                    found = cursor.fetchall()
                    assert cursor.description is not None and len(found) == 1, found
                    for column, value in zip(cursor.description, found[0], strict=True):
                        values[argument + column.name] = _as_psql_text(value)
                elif command == "echo":
                    echoed.append(_VARIABLE_RE.sub(lambda m: values[m.group(2)], argument))
                else:
                    raise ValueError(f"unsupported psql meta-command \\{command}")
                continue
            if not active():
                continue
            if not in_body and (not stripped or stripped.startswith("--")):
                continue
            opens_or_closes = line.count("$$") % 2 == 1
            buffer.append(line if in_body or "$$" in line else substitute(line))
            if opens_or_closes:
                in_body = not in_body
            if not in_body and stripped.endswith(";"):
                run(buffer)
                buffer = []
        assert not stack, "unbalanced \\if"
        assert not buffer, f"unterminated statement: {buffer}"
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute(b"ROLLBACK")
        raise
    return echoed


# -- roles per test --------------------------------------------------------------------------


@contextlib.contextmanager
def serialized(admin: psycopg.Connection[Any]) -> Iterator[None]:
    """Hold a cluster-wide lock while roles.sql is applied or its roles dropped.

    Two sessions changing the same catalog rows at once (grants on the
    database's shared objects, DROP OWNED) can fail with "tuple concurrently
    updated": PostgreSQL does not lock catalog rows for GRANT.
    """
    admin.execute("SELECT pg_advisory_lock(hashtext('orchestra tests: roles.sql'))")
    try:
        yield
    finally:
        admin.execute("SELECT pg_advisory_unlock(hashtext('orchestra tests: roles.sql'))")


class Roles:
    """The group roles of one test, their LOGIN roles, and how to connect as them."""

    def __init__(self, test_dsn: str, schema: str) -> None:
        self.test_dsn = test_dsn
        self.schema = schema
        self.group = {name: f"{schema}_{name}" for name in GROUPS}
        self.login = {name: f"{schema}_{name}_login" for name in GROUPS}

    @property
    def variables(self) -> dict[str, str]:
        """The psql variables of roles.sql for this test."""
        return {"schema": self.schema, **{f"{n}_role": r for n, r in self.group.items()}}

    def apply(self, admin: psycopg.Connection[Any]) -> list[str]:
        """Apply roles.sql as ``admin`` (a superuser)."""
        with serialized(admin):
            return apply_psql_script(admin, ROLES_SQL.read_text("utf-8"), self.variables)

    def create_logins(self, admin: psycopg.Connection[Any]) -> None:
        """One LOGIN role per group role, as the example at the end of roles.sql."""
        for name in GROUPS:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(self.login[name]),
                    sql.Literal(PASSWORD),
                    sql.Identifier(self.group[name]),
                )
            )
        admin.execute(
            sql.SQL("ALTER ROLE {} SET role = {}").format(
                sql.Identifier(self.login["migrator"]), sql.Literal(self.group["migrator"])
            )
        )

    def dsn(self, name: str) -> str:
        """The test DSN, logging in as the LOGIN role of group ``name``."""
        return make_conninfo(self.test_dsn, user=self.login[name], password=PASSWORD)

    def connect(self, name: str) -> psycopg.Connection[Any]:
        """An autocommit connection as the LOGIN role of group ``name``."""
        return psycopg.connect(self.dsn(name), autocommit=True)

    def config(self, name: str) -> Config:
        """A Config on the test schema, logging in as group ``name``."""
        return Config(self.dsn(name), schema=self.schema)

    def drop(self, admin: psycopg.Connection[Any]) -> None:
        """Drop every object the roles own (the schema too) and the roles."""
        names = [*self.login.values(), *self.group.values()]
        existing = [
            row[0]
            for row in admin.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [names]
            )
        ]
        if not existing:
            return
        with serialized(admin):
            self._drop(admin, existing, names)

    def _drop(self, admin: psycopg.Connection[Any], existing: list[str], names: list[str]) -> None:
        # One role at a time, the migrator first: a single DROP OWNED BY naming
        # both the owner of a default ACL and its grantees trips over the ACL
        # it already removed ("could not find tuple for default ACL").
        for name in sorted(existing, key=lambda n: n != self.group["migrator"]):
            admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        for name in names:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


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


def denied(conn: psycopg.Connection[Any], statement: str, schema: str) -> None:
    """Assert that ``statement`` ({s} is the schema) fails with permission denied."""
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=r"permission denied|must be owner"
    ):
        conn.execute(statement.replace("{s}", f'"{schema}"'))


def count(conn: psycopg.Connection[Any], statement: str, schema: str) -> int:
    row = conn.execute(statement.replace("{s}", f'"{schema}"')).fetchone()
    assert row is not None
    return int(row[0])


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
    for name in ("producer", "worker", "orchestrator", "dashboard"):
        with roles.connect(name) as conn:
            denied(conn, "CREATE TABLE {s}.intruder (id int)", roles.schema)


def test_a_producer_defers_and_reads_but_cannot_delete_or_rewrite_jobs(roles: Roles) -> None:
    """The producer role: defer, defer_many, dedup, dependencies, status; nothing else."""
    with roles.config("producer") as producer:
        jobs = define(producer)
        first = jobs["echo"].defer({"n": 1})
        waiting = jobs["echo"].defer({"n": 2}, depends_on=[first])  # re-check: status update
        keyed = jobs["limited"].defer({"n": 3}, unique_key="k", resource_key="printer")
        assert jobs["limited"].defer({"n": 4}, unique_key="k").id == keyed.id  # dedup read
        many = jobs["flaky"].defer_many([{"n": 5}, {"n": 6}])
        assert len(many) == 2
        assert first.status() == "available"
        assert waiting.status() == "waiting"

        # The management API is not the producer's.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            producer.jobs.delete(first.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            producer.jobs.cancel(first.id)

    with roles.connect("producer") as conn:
        s = roles.schema
        denied(conn, "DELETE FROM {s}.job", s)
        denied(conn, "TRUNCATE {s}.job", s)
        denied(conn, """UPDATE {s}.job SET payload = '{"n": 0}'""", s)
        denied(conn, """UPDATE {s}.job SET result = '"forged"'""", s)
        denied(conn, "UPDATE {s}.job SET attempt = 0, max_attempts = 100", s)
        denied(conn, "UPDATE {s}.job SET locked_until = now()", s)
        denied(conn, "DELETE FROM {s}.job_definition", s)
        denied(conn, "UPDATE {s}.job_definition SET last_released_at = now()", s)
        denied(conn, "SELECT * FROM {s}.job_attempt", s)
        denied(conn, "SELECT * FROM {s}.worker", s)
        denied(conn, "SELECT * FROM {s}.leader", s)
        denied(conn, "INSERT INTO {s}.job_attempt (job_id, attempt, started_at, outcome)"
               " VALUES (1, 1, now(), 'succeeded')", s)  # fmt: skip
        # `status` is writable (for the waiting -> available re-check), but the
        # table's CHECK constraints keep a producer from finalizing or claiming.
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(f"UPDATE \"{s}\".job SET status = 'cancelled' WHERE id = %s", [first.id])
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(f"UPDATE \"{s}\".job SET status = 'running' WHERE id = %s", [first.id])


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
        outcomes = conn.execute(
            f'SELECT outcome FROM "{s}".job_attempt WHERE job_id = %s ORDER BY attempt',
            [flaky.id],
        ).fetchall()
        assert outcomes == [("failed",), ("succeeded",)]
        assert count(conn, "SELECT count(*) FROM {s}.worker", s) == 0  # deregistered
        denied(conn, "DELETE FROM {s}.job", s)
        denied(conn, """UPDATE {s}.job SET payload = '{"n": 0}'""", s)
        denied(conn, "DELETE FROM {s}.job_definition", s)
        denied(conn, "DELETE FROM {s}.job_attempt", s)
        denied(
            conn, "INSERT INTO {s}.leader (name, holder, expires_at) VALUES ('x', 'y', now())", s
        )


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
        tick = JobDefinition(config, name="tick", job_function=echo, repeat_interval_ms=3_600_000)
        define(config)
        orchestrator = Orchestrator(config, event_handler=recorder, archive=True)
        orchestrator.start()
        try:
            wait_until(
                lambda: (
                    all(n >= 1 for n in orchestrator.passes.values())
                    or recorder.of_type(events.OrchestratorServiceFailed)
                ),
                timeout=30,
                message="the orchestrator did not run every service",
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
        assert [e.definition for e in recorder.of_type(events.OrchestratorJobScheduled)] == [
            tick.name
        ]

        # Time out everything a day later, then sweep (archive) two days after that.
        with roles.connect("orchestrator") as conn:
            now_row = conn.execute("SELECT now()").fetchone()
            assert now_row is not None
            now: dt.datetime = now_row[0]
            by_name = {service.name: service for service in orchestrator.services}
            finalized = by_name["finalizer"].run_once(conn, now + dt.timedelta(days=1))
            assert sum(finalized.counts.values()) >= 4  # three `short` jobs and the tick
            swept = by_name["sweeper"].run_once(conn, now + dt.timedelta(days=3))
            assert sum(swept.counts.values()) >= 4
            assert count(conn, "SELECT count(*) FROM {s}.job", s) == 0
            assert count(conn, "SELECT count(*) FROM {s}.job_archive", s) >= 4
            assert count(conn, "SELECT count(*) FROM {s}.worker", s) == 0
            denied(conn, "DELETE FROM {s}.job_attempt", s)
            denied(conn, "DROP TABLE {s}.job_archive", s)
            # archive_retention_ms: the sweep may prune the archive it fills.
            sweeper = by_name["sweeper"]
            assert isinstance(sweeper, Sweeper)
            sweeper.archive_retention_ms = 24 * 3_600_000
            pruned = sweeper.run_once(conn, now + dt.timedelta(days=5))
            assert pruned.counts["archived_jobs_pruned"] >= 4
            assert count(conn, "SELECT count(*) FROM {s}.job_archive", s) == 0


def test_the_dashboard_reads_everything_and_writes_nothing(
    roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """The dashboard role: every table and the read API; no write, not even a defer."""
    s = roles.schema
    with roles.config("producer") as producer:
        handle = define(producer)["echo"].defer({"n": 1})
    with roles.config("dashboard") as dashboard:
        assert [job.id for job in dashboard.jobs.list()] == [handle.id]
        assert dashboard.jobs.get(handle.id).payload == {"n": 1}
        assert dashboard.jobs.count(status="available") == 1
        assert [info.name for info in dashboard.jobs.definitions()] == ["echo"]
        dashboard.check_schema()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dashboard.jobs.cancel(handle.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dashboard.jobs.retry_failed()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            define(dashboard)["echo"].defer({"n": 2})
    with roles.connect("dashboard") as conn:
        for table in TABLES:
            conn.execute(f'SELECT * FROM "{s}".{table} LIMIT 1')
        denied(conn, "DELETE FROM {s}.job", s)
        denied(conn, "UPDATE {s}.job SET priority = 1", s)
        denied(
            conn, "INSERT INTO {s}.leader (name, holder, expires_at) VALUES ('x', 'y', now())", s
        )
        denied(conn, "UPDATE {s}.worker SET heartbeat_at = now()", s)
        denied(conn, "DELETE FROM {s}.job_definition", s)
    assert count(admin, "SELECT count(*) FROM {s}.job", s) == 1


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
"""


def privileges(admin: psycopg.Connection[Any], roles: Roles) -> set[tuple[str, ...]]:
    """Every privilege and owner in the schema, role names made independent of the test."""
    found = admin.execute(
        _PRIVILEGES, {"schema": roles.schema, "prefix": roles.schema + "\\_%"}
    ).fetchall()
    return {
        tuple("" if v is None else str(v).replace(roles.schema, "S") for v in row) for row in found
    }


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_and_the_python_applier_grant_the_same(
    test_dsn: str, admin: psycopg.Connection[Any], schema: str
) -> None:
    """psql -f roles.sql and apply_psql_script leave identical privileges and owners."""
    results = []
    for suffix, via_psql in (("a", False), ("b", True)):
        name = f"{schema}{suffix}"
        Config(test_dsn, schema=name).prepare_schema()
        roles = Roles(test_dsn, name)
        try:
            if via_psql:
                variables = [f"--variable={k}={v}" for k, v in roles.variables.items()]
                with serialized(admin):
                    completed = subprocess.run(
                        ["psql", "--no-psqlrc", "--quiet", "--dbname", test_dsn, *variables,
                         "--file", str(ROLES_SQL)],
                        capture_output=True, text=True, timeout=60, check=False,
                    )  # fmt: skip
                assert completed.returncode == 0, completed.stderr
                assert "ERROR" not in completed.stderr, completed.stderr
            else:
                roles.apply(admin)
            results.append(privileges(admin, roles))
        finally:
            roles.drop(admin)
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    python_applied, psql_applied = results
    assert python_applied == psql_applied
    assert ("table", "job", "", "S_producer", "DELETE") not in python_applied
    assert ("column", "job", "status", "S_producer", "UPDATE") in python_applied
    assert ("table", "job", "", "S_orchestrator", "DELETE") in python_applied
