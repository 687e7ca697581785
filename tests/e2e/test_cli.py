"""The ``orchestra`` command as users run it: help, migrate, daemon errors, logs, demo.

Exit codes (``orchestra/cli/``): 0 success, 1 runtime error, 2 usage error.
Errors must be readable, without a traceback and without the password.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestra import JobDefinition, _db
from orchestra.testing import wait_until
from tests._dsn_passwords import assert_hidden, dsn_forms
from tests.e2e._support import (
    APP,
    REPO,
    DaemonFactory,
    Queue,
    elapsed_since,
    one_line,
    orchestra_argv,
)

SECRET = "s3cr3t-XYZ"
DAEMON_OPTIONS = (
    "--role",
    "--app",
    "--channel",
    "--concurrency",
    "--name",
    "--process-interval-ms",
    "--shutdown-grace-ms",
    "--no-listen",
    "--log-format",
    "--log-level",
)


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run ``orchestra *args`` and capture its output."""
    return subprocess.run(
        orchestra_argv(*args),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr together, for messages and assertions."""
    return result.stdout + result.stderr


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert exit ``code`` with an ``error:`` line and no traceback; return the output."""
    output = output_of(result)
    assert result.returncode == code, output
    assert "error:" in result.stderr, output
    assert "Traceback" not in output, output
    return one_line(output)


def test_help_lists_commands_and_every_daemon_option(e2e_env: dict[str, str]) -> None:
    """``orchestra --help`` lists the commands and ``daemon --help`` every option."""
    top = run_cli("--help", env=e2e_env)
    assert top.returncode == 0, output_of(top)
    for command in ("migrate", "daemon", "demo"):
        assert command in top.stdout

    daemon = run_cli("daemon", "--help", env=e2e_env)
    assert daemon.returncode == 0, output_of(daemon)
    missing = [option for option in DAEMON_OPTIONS if option not in daemon.stdout]
    assert missing == [], daemon.stdout


def test_migrate_applies_then_reports_up_to_date(
    e2e_env: dict[str, str], test_dsn: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    """``orchestra migrate`` creates the schema, and a second run has nothing to do."""
    first = run_cli("migrate", "--dsn", test_dsn, "--schema", schema, env=e2e_env)
    assert first.returncode == 0, output_of(first)
    assert "applied 0001_initial" in one_line(first.stderr)
    tables = {
        row[0]
        for row in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
        )
    }
    assert {
        "job",
        "job_history",
        "job_definition",
        "job_attempt",
        "job_dependency",
        "worker",
    } <= tables
    assert "job_archive" not in tables  # folded into job_history

    second = run_cli("migrate", "--dsn", test_dsn, "--schema", schema, env=e2e_env)
    assert second.returncode == 0, output_of(second)
    assert "up to date" in one_line(second.stderr)


def test_migrate_rejects_a_bad_schema_name_as_usage_error(e2e_env: dict[str, str]) -> None:
    """A schema name that is not a safe identifier exits 2 with a readable error."""
    result = run_cli(
        "migrate",
        "--schema",
        "Bad-Name",
        env={**e2e_env, "ORCHESTRA_DSN": e2e_env["ORCHESTRA_TEST_DSN"]},
    )
    output = assert_clean_error(result, 2)
    assert "'Bad-Name' is not a valid schema name" in output


def test_errors_are_one_line_when_stderr_is_not_a_terminal(e2e_env: dict[str, str]) -> None:
    """An error message is printed on exactly one line, as the CLI promises, even in a log file."""
    result = run_cli(
        "migrate",
        "--schema",
        "Bad-Name",
        env={**e2e_env, "ORCHESTRA_DSN": e2e_env["ORCHESTRA_TEST_DSN"]},
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("reference", ["jobs[/]:config", "jobs[prod]:config"])
def test_error_messages_are_printed_literally(e2e_env: dict[str, str], reference: str) -> None:
    """Square brackets in an error message are printed as they are, not read as markup."""
    result = run_cli("daemon", "--role", "worker", "--app", reference, env=e2e_env)
    output = assert_clean_error(result, 2)
    assert reference in output


def test_daemon_with_an_unimportable_app_is_a_usage_error(e2e_env: dict[str, str]) -> None:
    """``--app`` naming a module that does not exist exits 2 with a readable message."""
    result = run_cli(
        "daemon", "--role", "worker", "--app", "nonexistent.module:config", env=e2e_env
    )
    output = assert_clean_error(result, 2)
    assert "cannot import 'nonexistent.module'" in output


def test_daemon_with_a_missing_app_attribute_is_a_usage_error(e2e_env: dict[str, str]) -> None:
    """``--app`` naming an attribute the module lacks exits 2 with a readable message."""
    result = run_cli(
        "daemon", "--role", "worker", "--app", "tests.e2e.apps.ledger_app:missing", env=e2e_env
    )
    output = assert_clean_error(result, 2)
    assert "has no attribute 'missing'" in output


def test_daemon_with_a_non_config_app_attribute_is_a_usage_error(
    e2e_env: dict[str, str],
) -> None:
    """``--app`` naming something that is not a Config exits 2 and says what it got."""
    result = run_cli(
        "daemon", "--role", "worker", "--app", "tests.e2e.apps.ledger_app:definitions", env=e2e_env
    )
    output = assert_clean_error(result, 2)
    assert "expected an orchestra Config" in output
    assert "got dict" in output


def test_daemon_with_an_app_factory_that_fails_is_a_usage_error(e2e_env: dict[str, str]) -> None:
    """``--app`` naming a function that cannot build a Config exits 2 with a readable message."""
    result = run_cli(
        "daemon", "--role", "worker", "--app", "tests.e2e.apps._jobs:define", env=e2e_env
    )
    output = assert_clean_error(result, 2)
    assert "tests.e2e.apps._jobs:define" in output


URI_WITH_SECRET = f"postgresql://u:{SECRET}@127.0.0.1:1/db"
KEYWORDS_WITH_SECRET = f"host=127.0.0.1 port=1 user=u password={SECRET} dbname=db"


@pytest.mark.parametrize(
    ("args", "env_var", "dsn"),
    [
        (("migrate", "--dsn", URI_WITH_SECRET), None, URI_WITH_SECRET),
        (("migrate", "--dsn", KEYWORDS_WITH_SECRET), None, KEYWORDS_WITH_SECRET),
        (("migrate",), "ORCHESTRA_DSN", URI_WITH_SECRET),
        (("daemon", "--role", "worker", "--app", APP), "ORCHESTRA_TEST_DSN", URI_WITH_SECRET),
    ],
    ids=["migrate-uri-argv", "migrate-keywords-argv", "migrate-env", "daemon-app"],
)
def test_database_down_exits_1_without_leaking_the_password(
    e2e_env: dict[str, str], args: tuple[str, ...], env_var: str | None, dsn: str
) -> None:
    """With PostgreSQL unreachable, the CLI exits 1 in bounded time and never shows the password."""
    env = dict(e2e_env) if env_var is None else {**e2e_env, env_var: dsn}
    started = time.monotonic()
    result = run_cli(*args, env=env, timeout=60)
    assert elapsed_since(started) < 30
    output = assert_clean_error(result, 1)
    assert "could not connect" in output
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr


def test_daemon_on_an_unmigrated_schema_says_to_migrate(
    e2e_env: dict[str, str], schema: str
) -> None:
    """A worker on a never-migrated schema exits 1 and tells to run ``orchestra migrate``."""
    result = run_cli("daemon", "--role", "worker", "--app", APP, env=e2e_env)
    output = assert_clean_error(result, 1)
    assert "orchestra migrate" in output
    assert schema in output


def test_json_log_format_writes_one_json_object_per_line(
    queue: Queue, jobs: dict[str, JobDefinition[Any]], daemons: DaemonFactory
) -> None:
    """With ``--log-format json`` every log line is a JSON object, lifecycle events included."""
    worker = daemons.start(extra=["--log-format", "json"])
    job_id = jobs["quick"].defer({"n": 1}).id
    wait_until(lambda: queue.job(job_id)["status"] == "succeeded", message="job not run")
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0

    lines = [line for line in worker.log().splitlines() if line.strip()]
    assert lines
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == []
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger"} <= record.keys() for record in records)
    by_event = {record.get("event"): record for record in records}
    for event in ("DaemonStarted", "WorkerJobSucceeded", "DaemonStopRequested", "DaemonStopped"):
        assert event in by_event, f"no {event} in {lines}"
    assert by_event["WorkerJobSucceeded"]["job_id"] == job_id
    assert by_event["DaemonStopRequested"]["reason"] == "SIGTERM"
    assert by_event["DaemonStopped"]["error"] is None


def test_demo_runs_to_completion(e2e_env: dict[str, str], test_dsn: str, schema: str) -> None:
    """``orchestra demo`` runs every demo job against the given PostgreSQL and exits 0."""
    result = run_cli(
        "demo", "--dsn", test_dsn, "--schema", schema, "--seconds", "60", env=e2e_env, timeout=90
    )
    assert result.returncode == 0, output_of(result)
    assert "jobs succeeded" in one_line(result.stdout)
    # The cron job ran (orchestrator), each tick once; the summary reads finished jobs too.
    cron = re.search(r"cron: (\d+) tick jobs for (\d+) distinct ticks", one_line(result.stdout))
    assert cron is not None, output_of(result)
    assert int(cron[2]) >= 1 and cron[1] == cron[2], cron[0]
    assert "release_interval_ms=250" in one_line(result.stdout)  # the rate-limited one too
    assert "Traceback" not in output_of(result)
    lines = result.stdout.splitlines()
    # The DSN on a line of its own; both failed attempts of the flaky job stay in sight.
    assert f"  database  {_db.redact_dsn(test_dsn)}" in lines
    failed = [line for line in lines if re.match(r"  flaky#\d+ attempt [12]: ", line)]
    assert len(failed) == 2, result.stdout
    # It ends with the commands that show what it did, the DSN and schema in them.
    # A DSN with a password is left out of them (see the test below).
    has_password = _db.redact_dsn(test_dsn) != test_dsn
    where = (
        f"--schema {schema}" if has_password else f"--dsn {shlex.quote(test_dsn)} --schema {schema}"
    )
    env = {**e2e_env, "ORCHESTRA_DSN": test_dsn} if has_password else e2e_env
    heading = next(
        i for i, line in enumerate(lines) if line.startswith(f"Schema {schema!r} is left")
    )
    commands = lines[heading + 1 :]
    assert [c.split(" --")[0].split()[:3] for c in commands] == [
        ["orchestra", "jobs", "list"],
        ["orchestra", "jobs", "show"],
        ["orchestra", "dashboard"],
    ]
    for command in commands:
        assert command.endswith(where), command
    listing = run_cli(*shlex.split(commands[0])[1:], env=env)
    assert listing.returncode == 0, output_of(listing)
    assert "charge" in listing.stdout and "succeeded" in listing.stdout
    shown = run_cli(*shlex.split(commands[1])[1:], env=env)
    assert shown.returncode == 0, output_of(shown)
    assert "flaky" in shown.stdout and "ConnectionError: upstream timed out" in shown.stdout


def test_demo_with_a_password_in_its_dsn_shows_neither_it_nor_the_dsn_in_commands(
    e2e_env: dict[str, str], test_dsn: str, schema: str
) -> None:
    """The database line is redacted; the commands leave --dsn out and say to set the variable."""
    password = "d3mo-s3cret"
    live = conninfo_to_dict(test_dsn)
    dsn = dsn_forms(
        password,
        host=str(live.get("host", "127.0.0.1")),
        port=str(live.get("port", "5432")),
        dbname=str(live.get("dbname", "postgres")),
        user=str(live.get("user", "postgres")),
    )["uri-raw"]
    result = run_cli(
        "demo", "--dsn", dsn, "--schema", schema, "--seconds", "60", env=e2e_env, timeout=90
    )
    assert result.returncode == 0, output_of(result)
    assert_hidden(output_of(result), password)
    lines = result.stdout.splitlines()
    assert any(line.startswith("  database  ") and "***" in line for line in lines), lines
    assert (
        f"Schema {schema!r} is left for you to look at, with ORCHESTRA_DSN set to the DSN "
        "given to the demo (its password is not printed here):"
    ) in lines
    assert f"  orchestra jobs list --schema {schema}" in lines


def test_python_dash_m_orchestra_is_the_orchestra_command(
    e2e_env: dict[str, str], test_dsn: str, schema: str
) -> None:
    """``python -m orchestra`` has the same commands and help, and runs them."""
    module = subprocess.run(
        [sys.executable, "-m", "orchestra", "--help"],
        env=e2e_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    script = run_cli("--help", env=e2e_env)
    assert module.returncode == 0, output_of(module)
    # Only the usage line differs: it names the program as it was started.
    assert module.stdout.splitlines()[1:] == script.stdout.splitlines()[1:]
    assert module.stdout.startswith("Usage: python -m orchestra ")

    migrated = subprocess.run(
        [sys.executable, "-m", "orchestra", "migrate", "--dsn", test_dsn, "--schema", schema],
        env=e2e_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, output_of(migrated)
    assert f"to schema {schema!r}" in one_line(migrated.stderr)


def test_daemon_logs_one_startup_line_saying_what_it_serves(
    queue: Queue, daemons: DaemonFactory, test_dsn: str
) -> None:
    """Once started, one line: roles, name, channel, concurrency, definitions, schema, DSN."""
    daemon = daemons.start(role="all", concurrency=3, name="banner")
    daemon.wait_for_log("carries")
    lines = [line for line in daemon.log().splitlines() if "carries" in line]
    assert len(lines) == 1, daemon.log()
    line = lines[0]
    for text in (
        "worker and orchestrator 'banner'",
        "serving channel '_default' with concurrency 3 in threads",
        "woken by LISTEN",
        "orchestrating every channel",
        "carries 5 definition(s): gated, gated_async, gated_once, limited, quick",
        f"schema {queue.schema!r} at {_db.redact_dsn(test_dsn)}",
    ):
        assert text in line, line
    assert "transaction pooling" not in line


@pytest.mark.parametrize("listen_dsn", [False, True])
def test_startup_line_says_how_a_worker_behind_a_transaction_pooler_is_woken(
    queue: Queue, daemons: DaemonFactory, test_dsn: str, listen_dsn: bool
) -> None:
    """The environment sets transaction pooling; the line says LISTEN where, or polling."""
    direct = make_conninfo(test_dsn, application_name="orchestra-listen")
    daemons.env = {
        **daemons.env,
        "ORCHESTRA_TRANSACTION_POOLING": "1",
        **({"ORCHESTRA_LISTEN_DSN": direct} if listen_dsn else {}),
    }
    daemon = daemons.start(name="pooled")
    daemon.wait_for_log("carries")
    line = next(line for line in daemon.log().splitlines() if "carries" in line)
    if listen_dsn:
        assert f"woken by LISTEN at {_db.redact_dsn(direct)}" in line, line
    else:
        assert "polling only (transaction pooling without a listen DSN)" in line, line
    assert f"at {_db.redact_dsn(test_dsn)} (transaction pooling)" in line, line


@pytest.mark.parametrize("role", ["worker", "all"])
def test_daemon_on_a_missing_schema_prints_only_the_error_line(
    e2e_env: dict[str, str], schema: str, role: str
) -> None:
    """Exit 1 with the one useful line: no stop requests or warnings before it."""
    result = run_cli("daemon", "--role", role, "--app", APP, env=e2e_env)
    assert result.returncode == 1, output_of(result)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: schema {schema!r} does not exist; if that is the name you meant, create it "
        f"with `orchestra migrate --schema {schema}` (or Config.prepare_schema())"
    ]


def test_daemon_refuses_a_schema_variable_that_is_not_its_apps(
    e2e_env: dict[str, str], schema: str
) -> None:
    """$ORCHESTRA_SCHEMA naming another schema than the app's Config: exit 2, one line."""
    result = run_cli(
        "daemon", "--role", "worker", "--app", APP,
        env={**e2e_env, "ORCHESTRA_SCHEMA": "other"},
    )  # fmt: skip
    output = assert_clean_error(result, 2)
    assert output.startswith("error: $ORCHESTRA_SCHEMA: 'other' is not the schema"), output
    assert repr(schema) in output


def test_dashboard_on_a_busy_port_fails_with_one_line_before_its_banner(
    queue: Queue, e2e_env: dict[str, str], test_dsn: str
) -> None:
    """Another program listens on the port: exit 1, one ``error:`` line, no "dashboard of"."""
    pytest.importorskip("uvicorn")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "dashboard", "--dsn", test_dsn, "--schema", queue.schema, "--port", str(port),
            env=e2e_env,
        )  # fmt: skip
    assert result.returncode == 1, output_of(result)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: the dashboard cannot listen on 127.0.0.1:{port}: Address already in use: "
        "another program listens there (choose another --port)"
    ]


def test_a_command_without_a_dsn_prints_no_runtime_dir_warning(e2e_env: dict[str, str]) -> None:
    """The embedded PostgreSQL without XDG_RUNTIME_DIR: its announcement, the result, nothing else."""
    pytest.importorskip("pgserver")
    home = Path(tempfile.mkdtemp(prefix="orchestra-cli-home-"))  # the server's user must reach it
    env = {k: v for k, v in e2e_env.items() if k != "XDG_RUNTIME_DIR"}
    env["ORCHESTRA_HOME"] = str(home)
    try:
        result = run_cli("migrate", "--schema", "cli_embedded", env=env, timeout=180)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert result.returncode == 0, output_of(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0] == f"orchestra: using the embedded PostgreSQL in {home / 'pgdata'}"
    assert lines[1].startswith("applied 0001_initial"), result.stderr
