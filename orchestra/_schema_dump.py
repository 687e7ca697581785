"""Write ``schemas/schema.sql``: the whole current schema, dumped from the migrations.

A development tool (``make schema``, or ``python -m orchestra._schema_dump``);
nothing in the package imports it. It applies every migration to a throwaway
schema, dumps that schema with ``pg_dump --schema-only`` of the server's major
version, and normalises the dump so that it reads like a migration: the
throwaway name becomes ``{schema}``, literal braces are doubled, and pg_dump's
session settings, comments and ownership are left out. Privileges stay: the
migrations revoke EXECUTE on some functions from PUBLIC, and that is part of
the schema.

The server is ``$ORCHESTRA_DSN``, else ``$ORCHESTRA_TEST_DSN``, else the
embedded PostgreSQL. schema.sql is for reading; ``orchestra migrate`` applies
the numbered migrations. tests/integration/test_schema_file.py checks that the
file builds the same schema as the migrations and that it is up to date.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from orchestra import _migrate, _sql

COMMAND = "make schema"

# pg_dump writes one of these before each object it dumps; the text between
# two of them is that object's statements.
_ENTRY_HEADER_RE = re.compile(r"^--\n-- (?:Data for )?Name: .*\n--\n", re.MULTILINE)
_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)")
_GENERATED_WITH_RE = re.compile(r"^-- Generated with PostgreSQL (\d+)\b", re.MULTILINE)


def server_major(conn: psycopg.Connection[Any]) -> int:
    """The major version of the server ``conn`` is connected to."""
    row = conn.execute("SHOW server_version_num").fetchone()
    if row is None:
        raise RuntimeError("the server did not report its version")
    return int(row[0]) // 10000


def pg_dump_major(pg_dump: Path) -> int | None:
    """The major version of the ``pg_dump`` at that path; None if it does not run."""
    try:
        done = subprocess.run(
            [str(pg_dump), "--version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(done.stdout)
    return int(match.group(1)) if match else None


def _candidates(major: int) -> list[Path]:
    """Places a pg_dump may be, most specific first."""
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            bindir = ""
        if bindir:
            found.append(Path(bindir) / "pg_dump")
    found += [
        Path(f"/usr/lib/postgresql/{major}/bin/pg_dump"),  # Debian, Ubuntu
        Path(f"/usr/pgsql-{major}/bin/pg_dump"),  # RHEL, Fedora (PGDG)
        Path(f"/opt/homebrew/opt/postgresql@{major}/bin/pg_dump"),  # Homebrew
        Path(f"/usr/local/opt/postgresql@{major}/bin/pg_dump"),
    ]
    # The embedded server's own binaries (the pgserver package), found without
    # importing it.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        found.append(Path(spec.origin).parent / "pginstall" / "bin" / "pg_dump")
    on_path = shutil.which("pg_dump")
    if on_path:
        found.append(Path(on_path))
    return found


def find_pg_dump(major: int) -> Path | None:
    """A pg_dump of that major version, or None.

    The major must match the server's: an older pg_dump refuses a newer
    server, and a newer one writes a dump that differs in form.
    """
    seen: set[Path] = set()
    for candidate in _candidates(major):
        if candidate in seen or not candidate.is_file():
            continue
        seen.add(candidate)
        if pg_dump_major(candidate) == major:
            return candidate
    return None


def dump(dsn: str, schema: str, pg_dump: Path) -> str:
    """pg_dump's ``--schema-only`` text of one schema, ownership left out."""
    params = conninfo.conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)  # not on the command line, where ps shows it
    done = subprocess.run(
        [
            str(pg_dump),
            "--schema-only",
            "--no-owner",
            "--no-tablespaces",
            f"--schema={_sql.validate_schema_name(schema)}",
            f"--dbname={conninfo.make_conninfo('', **params)}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{pg_dump} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _is_trailer(line: str) -> bool:
    # What pg_dump writes between objects or at the end: blank lines, session
    # settings (SET default_table_access_method ...), its comments, and psql
    # meta-commands (\restrict, \unrestrict with a random key).
    return not line.strip() or line.startswith(("SET ", "--", "\\"))


def normalise(raw: str, schema: str) -> str:
    """The statements of a pg_dump of ``schema``, written as a migration is.

    pg_dump's opening session settings, its comments and its trailing lines go;
    each object's statements are kept in pg_dump's order (by kind, then name:
    stable from one run to the next), separated by one blank line. Braces are
    doubled and the schema's name, quoted or not, becomes ``{schema}``.
    """
    _sql.validate_schema_name(schema)
    entries = _ENTRY_HEADER_RE.split(raw)[1:]  # [0] is the opening settings
    statements: list[str] = []
    for entry in entries:
        lines = entry.splitlines()
        while lines and _is_trailer(lines[-1]):
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if lines:
            statements.append("\n".join(line.rstrip() for line in lines))
    text = "\n\n".join(statements) + "\n"
    text = text.replace("{", "{{").replace("}", "}}")
    text = text.replace(f'"{schema}"', "{schema}")
    return re.sub(rf"\b{re.escape(schema)}\b", "{schema}", text)


def header(major: int) -> str:
    """The comment that opens schema.sql, and the one setting it needs."""
    last = _migrate.migrations()[-1]
    return f"""\
-- The whole current schema of an orchestra queue, as the migrations
-- 0001 to {last.version:04d}_{last.name} build it: for reading.
--
-- Generated with PostgreSQL {major}: do not edit. After adding a migration, run
-- `{COMMAND}` (python -m orchestra._schema_dump), which applies every
-- migration to a throwaway schema and dumps it with pg_dump --schema-only.
-- `orchestra migrate` never runs this file: it applies the numbered
-- migrations, on a new schema as on an old one. The migrations say why each
-- object is the way it is; tests/integration/test_schema_file.py checks that
-- this file builds the same schema as they do.
--
-- Format as the migrations: {{schema}} stands for the quoted schema name, and
-- literal braces are doubled. pg_dump's order: each kind of object together
-- (functions, tables and views, identities, partitions, keys, indexes, row
-- security, privileges), by name within a kind. The history partitions are
-- those the last migration makes on an empty schema.

-- Functions come before the tables they read: their bodies are checked when
-- they run, not when they are created.
SET check_function_bodies = false;

"""


def generated_major(text: str) -> int | None:
    """The PostgreSQL major a schema.sql text says it was generated with."""
    match = _GENERATED_WITH_RE.search(text)
    return int(match.group(1)) if match else None


def migrated_schema(dsn: str, schema: str, pg_dump: Path | None = None) -> str:
    """The normalised dump of ``schema`` after every migration was applied to it.

    ``schema`` must not exist; it is dropped afterwards.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        if pg_dump is None:
            pg_dump = _pg_dump_for(conn)
        try:
            _migrate.migrate(conn, schema)
            return normalise(dump(dsn, schema, pg_dump), schema)
        finally:
            conn.execute(_sql.render("DROP SCHEMA IF EXISTS {schema} CASCADE", schema))


def _pg_dump_for(conn: psycopg.Connection[Any]) -> Path:
    major = server_major(conn)
    found = find_pg_dump(major)
    if found is None:
        raise RuntimeError(
            f"no pg_dump of PostgreSQL {major} found (tried pg_config --bindir, "
            f"/usr/lib/postgresql/{major}/bin, the pgserver package, PATH)"
        )
    return found


def generate(dsn: str, schema: str | None = None, pg_dump: Path | None = None) -> str:
    """The text of schema.sql, built on the server at ``dsn``.

    ``schema`` is the throwaway schema to build in (a new name by default);
    it is dropped afterwards.
    """
    schema = schema or f"orchestra_schema_dump_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        major = server_major(conn)
    return header(major) + migrated_schema(dsn, schema, pg_dump)


def _dsn() -> str:
    for variable in ("ORCHESTRA_DSN", "ORCHESTRA_TEST_DSN"):
        configured = os.environ.get(variable, "").strip()
        if configured:
            return configured
    from orchestra._embedded import embedded_dsn  # noqa: PLC0415  (only without a DSN)

    return embedded_dsn(announce=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestra._schema_dump", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=_migrate.schema_file(),
        help="where to write (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    text = generate(_dsn())
    output: Path = args.output
    unchanged = output.is_file() and output.read_text("utf-8") == text
    if not unchanged:
        output.write_text(text, "utf-8")
    print(f"{output}: {'unchanged' if unchanged else 'written'}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
