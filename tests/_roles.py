"""Least-privilege roles of ``deploy/sql/roles.sql`` for a test: apply, log in, drop.

Shared by ``tests/integration/test_roles.py`` and the end-to-end tests that run
daemons under the roles. Roles are cluster-wide and tests run in parallel, so
every role name is suffixed by the test's schema name.

The file is written for psql (``psql -v schema=... -f roles.sql``). So that
the tests run where psql is not installed (the embedded server), it can be
applied by :func:`apply_psql_script`, which understands the few psql
meta-commands the file uses and quotes every variable with psycopg.sql;
``test_psql_and_the_python_applier_grant_the_same`` checks both agree
whenever psql is on the PATH.
"""

from __future__ import annotations

import contextlib
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

from orchestra import Config

ROLES_SQL = Path(__file__).resolve().parents[1] / "deploy" / "sql" / "roles.sql"
GROUPS = ("migrator", "producer", "worker", "orchestrator", "dashboard", "operator")
PASSWORD = "roles-test-password"
TABLES = (
    "schema_version",
    "job_definition",
    "job",
    "job_attempt",
    "job_dependency",
    "worker",
    "leader",
    "job_history",
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

    def apply_with_psql(self, admin: psycopg.Connection[Any]) -> str:
        """Apply roles.sql with psql itself, as the test server's user; return its stderr."""
        psql = shutil.which("psql")
        if psql is None:
            pytest.skip("psql is not installed")
        variables = [f"--variable={k}={v}" for k, v in self.variables.items()]
        with serialized(admin):
            completed = subprocess.run(
                [psql, "--no-psqlrc", "--quiet", "--dbname", self.test_dsn, *variables,
                 "--file", str(ROLES_SQL)],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        assert "ERROR" not in completed.stderr, completed.stderr
        return completed.stderr

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

    def add_login(self, admin: psycopg.Connection[Any], name: str, group: str) -> None:
        """Another LOGIN role, called ``name`` here, member of the group role ``group``.

        Two LOGIN roles of one group are two principals to the policies of
        roles.sql (``created_by``, ``registered_by``).
        """
        self.login[name] = f"{self.schema}_{name}_login"
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(self.login[name]),
                sql.Literal(PASSWORD),
                sql.Identifier(self.group[group]),
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


def denied(conn: psycopg.Connection[Any], statement: str, schema: str) -> None:
    """Assert that ``statement`` ({s} is the schema) fails with permission denied."""
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=r"permission denied|must be owner"
    ):
        conn.execute(statement.replace("{s}", f'"{schema}"'))


def count(conn: psycopg.Connection[Any], statement: str, schema: str) -> int:
    """The single integer ``statement`` ({s} is the schema) returns."""
    row = conn.execute(statement.replace("{s}", f'"{schema}"')).fetchone()
    assert row is not None
    return int(row[0])
