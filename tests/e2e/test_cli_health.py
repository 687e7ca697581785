"""``orchestra health``, run as a real process, as Kubernetes probes and systemd run it.

Exit codes: 0 healthy, 1 unhealthy (one readable line, no traceback, no
password), 2 usage error.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orchestra import Config
from tests.e2e._support import APP, REPO, DaemonFactory, elapsed_since, one_line, orchestra_argv

SECRET = "h3alth-s3cret"


def health(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``orchestra health *args`` and capture its output."""
    return subprocess.run(
        orchestra_argv("health", *args),
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def unhealthy(result: subprocess.CompletedProcess[str]) -> str:
    """Assert exit 1 with exactly one error line and no traceback; return that line."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: unhealthy: "), lines[0]
    return lines[0]


def healthy(result: subprocess.CompletedProcess[str]) -> str:
    """Assert exit 0; return stdout."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_migrated_schema_is_healthy(
    e2e_env: dict[str, str], test_dsn: str, config: Config
) -> None:
    """Database reachable and schema at the required version: exit 0, one line."""
    # The test server is shared: another client's long transaction must not
    # turn this into "degraded" (tests/integration/test_vacuum_horizon.py).
    out = healthy(
        health(
            "--dsn", test_dsn, "--schema", config.schema,
            "--max-transaction-age-s", "86400", env=e2e_env,
        )
    )  # fmt: skip
    assert out.startswith("healthy: PostgreSQL answered"), out
    assert f"schema {config.schema!r} is at version" in out

    document = json.loads(
        healthy(
            health("--schema", config.schema, "--json", env={**e2e_env, "ORCHESTRA_DSN": test_dsn})
        )
    )
    assert document["healthy"] is True
    assert document["error"] is None
    assert document["schema_version"] == document["required_version"] >= 3


def test_a_schema_that_is_not_migrated_is_unhealthy(
    e2e_env: dict[str, str], test_dsn: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    """A missing schema: exit 1, the line says it does not exist and how to create it.

    Created but never migrated, it is at version 0 and the line says to migrate it.
    """
    line = unhealthy(health("--dsn", test_dsn, "--schema", schema, env=e2e_env))
    assert f"schema {schema!r} does not exist" in line
    assert f"orchestra migrate --schema {schema}" in line

    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    line = unhealthy(health("--dsn", test_dsn, "--schema", schema, env=e2e_env))
    assert f"schema {schema!r} is at version 0" in line
    assert f"orchestra migrate --schema {schema}" in line

    result = health("--dsn", test_dsn, "--schema", schema, "--json", env=e2e_env)
    unhealthy(result)
    document = json.loads(result.stdout)
    assert document["healthy"] is False
    assert document["schema_version"] == 0
    assert "orchestra migrate" in document["error"]


def test_a_database_that_is_down_is_unhealthy_without_leaking_the_password(
    e2e_env: dict[str, str],
) -> None:
    """Nothing listens: exit 1 at once (one attempt), readable, password redacted."""
    started = time.monotonic()
    result = health(
        "--schema",
        "_queue",
        "--timeout-s",
        "2",
        env={**e2e_env, "ORCHESTRA_DSN": f"postgresql://u:{SECRET}@127.0.0.1:1/db"},
    )
    assert elapsed_since(started) < 20
    line = unhealthy(result)
    assert "could not connect to PostgreSQL at postgresql://u:***@127.0.0.1:1/db" in line
    assert "after 1 attempt(s)" in line
    assert SECRET not in result.stdout + result.stderr


def test_a_running_worker_is_alive_and_a_stopped_one_is_not(
    e2e_env: dict[str, str], config: Config, daemons: DaemonFactory
) -> None:
    """--role worker finds the daemon's fresh heartbeat on this host; after SIGTERM it does not."""
    worker = daemons.start(name="probe")
    env = dict(e2e_env)
    out = healthy(health("--app", APP, "--role", "worker", env=env))
    assert "1 worker daemon(s) on host" in out
    healthy(health("--app", APP, "--role", "worker", "--name", "probe", env=env))

    line = unhealthy(health("--app", APP, "--role", "worker", "--name", "other", env=env))
    assert "no worker daemon named 'other'" in line
    assert "none is registered" in line
    line = unhealthy(health("--app", APP, "--role", "orchestrator", env=env))
    assert "no orchestrator daemon on host" in line
    unhealthy(health("--app", APP, "--role", "worker", "--host", "elsewhere.invalid", env=env))

    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    unhealthy(health("--app", APP, "--role", "worker", env=env))  # its row is gone


def test_a_stale_heartbeat_is_not_alive(
    e2e_env: dict[str, str], test_dsn: str, config: Config, db: psycopg.Connection[Any]
) -> None:
    """A daemon row of this host whose heartbeat is 5 minutes old fails the default 60 s."""
    db.execute(
        sql.SQL(
            "INSERT INTO {}.worker (name, role, host, pid, heartbeat_at)"
            " VALUES ('stuck', 'worker', %s, 1, now() - interval '5 minutes')"
        ).format(sql.Identifier(config.schema)),
        [socket.gethostname()],
    )
    args = ("--dsn", test_dsn, "--schema", config.schema, "--role", "worker")
    line = unhealthy(health(*args, env=e2e_env))
    assert "(1 registered, latest heartbeat 30" in line  # 300.x s ago

    document = json.loads(
        healthy(health(*args, "--max-heartbeat-age-s", "600", "--json", env=e2e_env))
    )
    assert document["fresh_daemons"] == 1
    assert 299 < document["latest_heartbeat_age_s"] < 600


def test_schema_option_overrides_the_schema_of_the_app(
    e2e_env: dict[str, str], config: Config
) -> None:
    """--app with --schema: the app's DSN, the schema given (the option comes first)."""
    other = f"{config.schema}_other"
    line = unhealthy(health("--app", APP, "--schema", other, env=e2e_env))
    assert f"schema {other!r} does not exist" in line
    out = healthy(
        health(
            "--app", APP, "--schema", config.schema, "--max-transaction-age-s", "86400",
            env=e2e_env,
        )
    )  # fmt: skip
    assert f"schema {config.schema!r} is at version" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no database to check"),
        (("--dsn", "postgresql://127.0.0.1:1/db", "--schema", "Bad-Name"), "not a valid schema"),
    ],
    ids=["no-database", "bad-schema"],
)
def test_usage_errors_exit_2(e2e_env: dict[str, str], args: tuple[str, ...], message: str) -> None:
    """Options that cannot work exit 2 with a readable message, before any connection."""
    result = health(*args, env=e2e_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in one_line(result.stderr)
    assert "Traceback" not in result.stderr
