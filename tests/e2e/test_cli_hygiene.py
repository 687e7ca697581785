"""The ``orchestra`` command keeps passwords out of its output and forged lines out of its logs.

* migrate, health and jobs list, failing to connect, print one line without the
  password, whatever characters it holds (raw ``?`` and ``#`` in a URI, quotes
  and backslashes in key=value form, percent-encoded ``@``, ``%``, ``/``, non-ASCII);
* ``orchestra dashboard`` announces the DSN it serves with the password hidden;
* ``orchestra daemon --name`` (or ``--channel``) with a line break or another
  control character exits 2 with one line, before importing the app or
  registering anything.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests._dsn_passwords import assert_hidden, dsn_forms
from tests.e2e._support import APP, REPO, Daemon, DaemonFactory, Queue, orchestra_argv

#: (form, password): the forms where each kind of character is hardest to redact.
PASSWORDS = [
    ("uri-raw", "Pw?#9z:x"),
    ("key-value", "Pw' \\9z"),
    ("uri-encoded", "Pw@%/密9z"),
]
START_TIMEOUT_S = 30.0


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        orchestra_argv(*argv),
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _refused_dsn(form: str, password: str) -> str:
    return dsn_forms(password, host="127.0.0.1", port="1", dbname="orchestra_db", user="alice")[
        form
    ]


@pytest.mark.parametrize(
    ("command", "via"),
    [(["migrate"], "argv"), (["jobs", "list"], "env"), (["health"], "env")],
    ids=["migrate", "jobs-list", "health"],
)
@pytest.mark.parametrize(("form", "password"), PASSWORDS, ids=[f for f, _ in PASSWORDS])
def test_connection_error_of_a_command_hides_the_password(
    e2e_env: dict[str, str], command: list[str], via: str, form: str, password: str
) -> None:
    """Nothing listens: exit 1, one ``error:`` line naming the server, no password anywhere."""
    dsn = _refused_dsn(form, password)
    if via == "argv":
        result = _run([*command, "--dsn", dsn], e2e_env)
    else:
        result = _run(command, {**e2e_env, "ORCHESTRA_DSN": dsn})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, output
    assert "could not connect to PostgreSQL at " in errors[0]
    assert "alice" in errors[0] and "127.0.0.1" in errors[0]
    assert_hidden(output, password)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(("form", "password"), PASSWORDS[:2], ids=[f for f, _ in PASSWORDS[:2]])
def test_dashboard_startup_line_hides_the_password(
    queue: Queue,
    daemons: DaemonFactory,
    e2e_env: dict[str, str],
    test_dsn: str,
    tmp_path: Path,
    form: str,
    password: str,
) -> None:
    """`orchestra dashboard` on the live server (a password added) names the DSN redacted."""
    live = conninfo_to_dict(test_dsn)
    dsn = dsn_forms(
        password,
        host=str(live.get("host", "127.0.0.1")),
        port=str(live.get("port", "5432")),
        dbname=str(live.get("dbname", "postgres")),
        user=str(live.get("user", "postgres")),
    )[form]
    log_path = tmp_path / "dashboard.log"
    log_file = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            orchestra_argv("dashboard", "--schema", queue.schema, "--port", str(_free_port())),
            cwd=REPO,
            env={**e2e_env, "ORCHESTRA_DSN": dsn},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    dashboard = Daemon(proc, log_path, log_file)
    daemons.daemons.append(dashboard)  # killed at teardown, log attached on failure
    dashboard.wait_for_log("dashboard of schema", timeout=START_TIMEOUT_S)
    line = next(x for x in dashboard.log().splitlines() if "dashboard of schema" in x)
    assert "***" in line
    assert_hidden(dashboard.log(), password)


@pytest.mark.parametrize(
    ("option", "value", "shown"),
    [
        ("--name", "w\n2024-01-01 00:00:00 CRITICAL orchestra: forged", "\\n"),
        ("--name", "w\r2024-01-01 00:00:00 CRITICAL orchestra: forged", "\\r"),
        ("--name", "w\x1b[2K\x1b[1Gforged", "\\x1b"),
        ("--name", "w\u2028forged", "\\u2028"),
        ("--name", "w\u202eforged", "\\u202e"),
        ("--channel", "mail\nforged", "\\n"),
    ],
    ids=["name-newline", "name-carriage-return", "name-escape", "name-line-separator",
         "name-bidi-override", "channel-newline"],
)  # fmt: skip
def test_daemon_with_a_control_character_in_a_name_exits_2_and_starts_nothing(
    queue: Queue, e2e_env: dict[str, str], option: str, value: str, shown: str
) -> None:
    """One ``error:`` line naming the option and the escaped character; no daemon registered."""
    result = _run(["daemon", "--role", "all", "--app", APP, option, value], e2e_env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"error: {option}: "), output
    assert shown in lines[0]
    assert "forged" not in output
    assert value not in output
    assert queue.workers() == 0
    # Nothing was written: no daemon row, no definition.
    assert queue.value("SELECT count(*) FROM {s}.job_definition") == 0


def test_health_refuses_a_control_character_in_name_with_one_line(
    e2e_env: dict[str, str], test_dsn: str
) -> None:
    """health --name with a line break: exit 2, one line, before connecting."""
    result = _run(["health", "--dsn", test_dsn, "--role", "worker", "--name", "w\nforged"], e2e_env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: --name: must not contain control, format or line separator characters: "
        "found \\n (U+000A) at index 1"
    ]
