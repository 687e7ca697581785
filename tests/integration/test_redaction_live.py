"""Passwords stay hidden in the errors of real failed connections, CLI commands and the dashboard.

Every printable ASCII character (and a few beyond) is tried inside a password,
in each DSN form libpq reads (see ``tests/_dsn_passwords.py``). The connections
really fail: nothing listens on port 1, and the live server has no database
``orchestra_no_such_db`` (it trusts local connections, so the password itself
is ignored and the DSN of the test server, with a password added, connects).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import uvicorn
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict
from starlette.testclient import TestClient

from orchestra import Config, DatabaseUnavailableError, _db
from orchestra.cli import main
from orchestra.dashboard import DashboardAuth, create_app
from tests._dsn_passwords import CHARACTERS, Case, assert_hidden, cases, params

REFUSED = params(cases(port="1"))


def _live_cases(*, dbname: str | None = None) -> list[Any]:
    """The cases on the live test server (same host, port and user as ORCHESTRA_TEST_DSN)."""
    dsn = os.environ.get("ORCHESTRA_TEST_DSN", "")
    if not dsn:
        return [pytest.param(None, marks=pytest.mark.skip(reason="needs ORCHESTRA_TEST_DSN"))]
    live = conninfo_to_dict(dsn)
    return params(
        cases(
            host=str(live.get("host", "127.0.0.1")),
            port=str(live.get("port", "5432")),
            dbname=dbname or str(live.get("dbname", "postgres")),
            user=str(live.get("user", "postgres")),
        )
    )


@pytest.fixture
def instant_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection retries without the waits between them (the attempts still happen)."""
    monkeypatch.setattr(_db, "retry_delays", lambda attempts, *a, **k: [0.0] * (attempts - 1))


@pytest.mark.parametrize("case", REFUSED)
def test_refused_connection_error_hides_the_password(case: Case) -> None:
    """Nothing listens: DatabaseUnavailableError names the redacted DSN, never the password."""
    with pytest.raises(DatabaseUnavailableError) as info:
        _db.connect(case.dsn, attempts=1, timeout_s=2)
    assert "could not connect to PostgreSQL at " in str(info.value)
    for text in (str(info.value), info.value.dsn, info.value.reason, repr(info.value)):
        assert_hidden(text, case.password)


@pytest.mark.parametrize("case", _live_cases(dbname="orchestra_no_such_db"))
def test_server_error_naming_the_dsn_parts_hides_the_password(case: Case) -> None:
    """The server answers 'database ... does not exist': its message is shown, the password not."""
    with pytest.raises(DatabaseUnavailableError) as info:
        _db.connect(case.dsn, attempts=1, timeout_s=5)
    assert "orchestra_no_such_db" in info.value.reason
    for text in (str(info.value), info.value.dsn, info.value.reason):
        assert_hidden(text, case.password)


@pytest.mark.parametrize("case", REFUSED)
def test_async_connect_error_hides_the_password(case: Case) -> None:
    """connect_async fails the same way, password hidden."""
    with pytest.raises(DatabaseUnavailableError) as info:
        asyncio.run(_db.connect_async(case.dsn, attempts=1, timeout_s=2))
    assert_hidden(str(info.value), case.password)


COMMANDS = {
    "migrate": ["migrate"],
    "health": ["health"],
    "health-json": ["health", "--json"],
    "jobs-list": ["jobs", "list"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", REFUSED)
def test_cli_error_hides_the_password(
    case: Case, command: str, instant_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate, health and jobs list fail with one line (exit 1) that never shows the password."""
    monkeypatch.delenv("ORCHESTRA_DSN", raising=False)
    runner = CliRunner()
    for argv, env in (
        ([*COMMANDS[command], "--dsn", case.dsn], {}),
        (COMMANDS[command], {"ORCHESTRA_DSN": case.dsn}),
    ):
        result = runner.invoke(main, argv, env=env)
        output = result.stdout + result.stderr
        assert result.exit_code == 1, output
        assert "could not connect to PostgreSQL" in output
        assert_hidden(output, case.password)
        if command == "health-json":
            report = json.loads(result.stdout)
            assert "could not connect" in report["error"]


@pytest.mark.parametrize("case", REFUSED)
def test_dashboard_503_hides_the_password(
    case: Case, caplog: pytest.LogCaptureFixture, instant_retries: None
) -> None:
    """The 503 of an unreachable database: JSON body, HTML page and log line are redacted."""
    config = Config(case.dsn, schema="unreachable", connect_attempts=1)
    with (
        caplog.at_level(logging.ERROR, logger="orchestra.dashboard"),
        TestClient(create_app(config, auth=DashboardAuth())) as client,
    ):
        api = client.get("/api/overview")
        page = client.get("/jobs")
    assert api.status_code == 503
    assert "could not connect to PostgreSQL" in api.json()["error"]
    assert_hidden(api.json()["error"], case.password)
    assert_hidden(api.text, case.password)
    assert page.status_code == 503
    assert_hidden(page.text, case.password)
    assert_hidden(caplog.text, case.password)


def _startup_cases() -> list[Any]:
    """One case per character on the live server (each opens a pool), the forms taking turns."""
    found = _live_cases()
    if found[0].values[0] is None:
        return found
    by_character: dict[str, list[Any]] = {}
    for param in found:
        by_character.setdefault(param.values[0].character, []).append(param)
    return [
        forms[CHARACTERS.index(character) % len(forms)] for character, forms in by_character.items()
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served_schema(test_dsn: str) -> Iterator[str]:
    """A migrated schema shared by the start-up tests (each only reads its version)."""
    name = f"t_redaction_{uuid.uuid4().hex[:10]}"
    with Config(test_dsn, schema=name) as config:
        config.prepare_schema()
    yield name
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.mark.parametrize("case", _startup_cases())
def test_dashboard_startup_line_hides_the_password(
    case: Case, served_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`orchestra dashboard` announces the redacted DSN it serves (server run replaced)."""
    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    monkeypatch.delenv("ORCHESTRA_DSN", raising=False)
    result = CliRunner().invoke(
        main,
        # A port nobody listens on: the dashboard tries it before its start-up line.
        ["dashboard", "--schema", served_schema, "--port", str(_free_port())],
        env={"ORCHESTRA_DSN": case.dsn},
    )
    output = result.stdout + result.stderr
    assert result.exit_code == 0, output
    assert served, output
    assert f"dashboard of schema {served_schema!r} at " in output
    assert "***" in output
    assert_hidden(output, case.password)
