"""``orchestra defer`` run as a real process against the test database.

The job is deferred through the app's definition (``tests.e2e.apps.defer_app``):
its id is the one line on stdout, its row holds the payload as the definition
converts it, the priority and the time it is due. With --wait the result
comes back on stdout, a failure exits 1 and a timeout 124. Every bad input
is one error line and exit 2, and writes nothing: no job, and no definition
row either.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from typing import Any

import psycopg
import pytest

from orchestra import Config
from tests.e2e._support import REPO, DaemonFactory, one_line, orchestra_argv

DEFER_APP = "tests.e2e.apps.defer_app:config"


def defer(
    *args: str, env: dict[str, str], stdin: str = "", app: str | None = DEFER_APP
) -> subprocess.CompletedProcess[str]:
    """Run ``orchestra defer [--app DEFER_APP] *args``."""
    argv = orchestra_argv("defer", *(("--app", app) if app is not None else ()), *args)
    return subprocess.run(
        argv,
        env=env,
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def deferred_id(result: subprocess.CompletedProcess[str]) -> int:
    """Assert exit 0 and one line on stdout; return the job id it holds."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].isdigit(), result.stdout
    return int(lines[0])


def rows(db: psycopg.Connection[Any], config: Config, query: str, *params: Any) -> list[Any]:
    """Run ``query`` with ``{s}`` as the quoted test schema; return its rows."""
    return db.execute(query.replace("{s}", f'"{config.schema}"'), list(params)).fetchall()


def job_row(db: psycopg.Connection[Any], config: Config, job_id: int) -> dict[str, Any]:
    """The job's row (unfinished or finished) as a dict."""
    cursor = db.execute(
        f"SELECT definition, channel, status::text AS status, priority, payload, run_at,"
        f' created_at, unique_key, resource_key FROM "{config.schema}".all_jobs WHERE id = %s',
        (job_id,),
    )
    found = cursor.fetchone()
    assert found is not None, f"job {job_id} not found"
    assert cursor.description is not None
    return dict(zip([c.name for c in cursor.description], found, strict=True))


def test_defer_prints_the_id_of_a_row_with_the_payload_priority_and_delay(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str]
) -> None:
    """The id on stdout names a row holding the payload, --priority and run_at = now + --delay."""
    result = defer(
        "echo", '{"to": "ada", "n": [1, 2]}', "--priority", "-7", "--delay", "1.5h", env=e2e_env
    )
    job_id = deferred_id(result)
    row = job_row(db, config, job_id)
    assert row["definition"] == "echo" and row["channel"] == "_default"
    assert row["payload"] == {"to": "ada", "n": [1, 2]}
    assert row["priority"] == -7
    assert row["run_at"] - row["created_at"] == dt.timedelta(minutes=90)
    assert row["status"] == "available"
    assert one_line(result.stderr).startswith(
        f"deferred job {job_id} of echo on channel _default, priority -7, due in 5400 s"
    )


def test_a_typed_payload_is_converted_as_in_python_with_the_definitions_defaults(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str]
) -> None:
    """greet's Greeting fills its default field; the definition's priority applies; run_at as given."""
    run_at = "2031-05-01T09:00:00+02:00"
    job_id = deferred_id(defer("greet", '{"name": "ada"}', "--run-at", run_at, env=e2e_env))
    row = job_row(db, config, job_id)
    assert row["payload"] == {"name": "ada", "times": 1}
    assert row["priority"] == 3
    assert row["run_at"] == dt.datetime.fromisoformat(run_at)


def test_the_payload_is_read_from_stdin_and_defaults_to_null(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str]
) -> None:
    """``-`` reads the JSON document from stdin; without PAYLOAD the payload is null."""
    from_stdin = deferred_id(defer("echo", "-", env=e2e_env, stdin='{\n  "batch": 7\n}\n'))
    assert job_row(db, config, from_stdin)["payload"] == {"batch": 7}
    without = deferred_id(defer("echo", env=e2e_env))
    assert job_row(db, config, without)["payload"] is None


def test_an_app_from_the_environment_variable_serves_as_well(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str]
) -> None:
    """$ORCHESTRA_APP names the app when --app is not given."""
    job_id = deferred_id(defer("echo", "[]", env={**e2e_env, "ORCHESTRA_APP": DEFER_APP}, app=None))
    assert job_row(db, config, job_id)["payload"] == []


def test_a_held_unique_key_prints_the_holders_id_and_says_so(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str]
) -> None:
    """The second defer with the same --unique-key inserts nothing and prints the first id."""
    first = deferred_id(defer("echo", '{"n": 1}', "--unique-key", "nightly", env=e2e_env))
    again = defer("echo", '{"n": 2}', "--unique-key", "nightly", env=e2e_env)
    assert deferred_id(again) == first
    assert one_line(again.stderr) == (
        f"deduplicated: unfinished job {first} of echo already holds unique key 'nightly'; "
        "nothing new was deferred"
    )
    assert rows(db, config, "SELECT count(*) FROM {s}.all_jobs") == [(1,)]
    assert job_row(db, config, first)["unique_key"] == "nightly"


def test_wait_prints_the_result_that_a_worker_returned(
    config: Config, e2e_env: dict[str, str], daemons: DaemonFactory
) -> None:
    """With a worker daemon running the app, --wait prints the job's result as JSON."""
    daemons.start(app=DEFER_APP)
    result = defer("greet", '{"name": "ada", "times": 2}', "--wait", env=e2e_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"text": "hello ada hello ada"}
    assert len(result.stdout.splitlines()) == 1


def test_wait_on_a_failing_job_exits_1_with_its_error(
    config: Config, e2e_env: dict[str, str], daemons: DaemonFactory
) -> None:
    """A job that fails: exit 1, its last error on stderr, nothing on stdout."""
    daemons.start(app=DEFER_APP)
    result = defer("refuse", '"parcel"', "--wait", "--timeout", "5m", env=e2e_env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "failed: ValueError: refused 'parcel'" in errors[0]
    assert "Traceback" not in result.stderr


def test_wait_past_its_timeout_exits_124_and_leaves_the_job_queued(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str]
) -> None:
    """No worker: --timeout passes, exit 124 with one line; the job is still available."""
    result = defer("echo", "{}", "--wait", "--timeout", "200ms", env=e2e_env)
    assert result.returncode == 124, result.stdout + result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "is still available after waiting 0.2 s for its result" in errors[0]
    (job_id,) = (r[0] for r in rows(db, config, "SELECT id FROM {s}.job"))
    assert f"job {job_id} " in errors[0]


#: Bad input, each with a piece of the one error line it must print.
BAD_INPUT = {
    "unknown definition": (
        ("nope", "{}"),
        "NAME: --app tests.e2e.apps.defer_app:config registers no definition 'nope'; "
        "it registers: echo, greet, refuse",
    ),
    "empty app": (("--app", "", "echo", "{}"), "--app '': expected the form pkg.module:config"),
    "unknown app": (
        ("--app", "tests.e2e.apps.nowhere:config", "echo", "{}"),
        "cannot import 'tests.e2e.apps.nowhere'",
    ),
    "negative delay": (("echo", "{}", "--delay", "-5s"), "--delay: must not be negative"),
    "delay that is not a duration": (
        ("echo", "{}", "--delay", "soon"),
        "--delay: 'soon' is not a duration",
    ),
    "priority out of range": (
        ("echo", "{}", "--priority", "101"),
        "--priority: must be between -100 and 100, got 101",
    ),
    "priority that is not a number": (
        ("echo", "{}", "--priority", "high"),
        "--priority: must be an integer from -100 to 100, got 'high'",
    ),
    "malformed JSON": (
        ("echo", '{"to": }'),
        "PAYLOAD: not valid JSON: Expecting value at line 1 column 8",
    ),
    "NaN": (("echo", "[NaN]"), "PAYLOAD: not valid JSON: NaN is not a JSON value"),
    "payload that does not fit the type": (
        ("greet", '{"times": 2}'),
        "payload for 'greet': does not fit Greeting:",
    ),
    "run-at without a time zone": (
        ("echo", "{}", "--run-at", "2031-05-01T09:00:00"),
        "--run-at: '2031-05-01T09:00:00' has no time zone",
    ),
    "delay and run-at": (
        ("echo", "{}", "--delay", "1s", "--run-at", "2031-05-01T09:00:00Z"),
        "--run-at: give either --run-at or --delay, not both",
    ),
    "timeout without wait": (("echo", "{}", "--timeout", "5s"), "--timeout: only goes with --wait"),
    "a schema that is not the app's": (
        ("echo", "{}", "--schema", "elsewhere"),
        "--schema: 'elsewhere' is not the schema of the Config that --app names",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_error_line_exit_2_and_writes_nothing(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str], case: str
) -> None:
    """One ``error:`` line naming what is wrong, exit 2, no job and no definition row."""
    args, expected = BAD_INPUT[case]
    result = defer(*args, env=e2e_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert rows(db, config, "SELECT count(*) FROM {s}.all_jobs") == [(0,)]
    assert rows(db, config, "SELECT count(*) FROM {s}.job_definition") == [(0,)]


def test_without_an_app_the_definition_is_refused_before_any_connection(
    e2e_env: dict[str, str],
) -> None:
    """No --app and no $ORCHESTRA_APP: one line saying the app is needed, exit 2."""
    result = defer(
        "echo", "{}", "--dsn", "postgresql://nobody@127.0.0.1:1/none", env=e2e_env, app=None
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_line(result.stderr) == (
        "error: NAME: definition 'echo' cannot be deferred without --app (or $ORCHESTRA_APP): "
        "the app registers the JobDefinition, with its payload type, that the job is deferred "
        "through"
    )


def test_the_command_in_the_example_app_defers_a_typed_job(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str], test_dsn: str
) -> None:
    """examples/app.py's docstring command: the JSON becomes a Resize job on the app's queue."""
    env = {**e2e_env, "ORCHESTRA_DSN": test_dsn, "EXAMPLE_SCHEMA": config.schema}
    result = defer(
        "resize-image", '{"path": "cat.png", "width": 64}', env=env, app="examples.app:config"
    )
    row = job_row(db, config, deferred_id(result))
    assert (row["definition"], row["payload"]) == ("resize-image", {"path": "cat.png", "width": 64})
