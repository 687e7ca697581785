"""Every command that uses the queue finds it the same way: --app, --dsn, --schema and variables.

Each of the three comes from its option, else ``$ORCHESTRA_APP``,
``$ORCHESTRA_DSN`` or ``$ORCHESTRA_SCHEMA``, else the Config the app names,
else the default; so a non-default schema is set once, not on every command.
"""

from __future__ import annotations

import subprocess

import pytest

from orchestra import Config, JobDefinition
from tests.e2e._support import APP, REPO, one_line, orchestra_argv

#: Every command that uses the queue, as the words that start it.
QUEUE_COMMANDS = [
    ("migrate",),
    ("daemon",),
    ("dashboard",),
    ("defer",),
    ("health",),
    ("jobs", "list"),
    ("jobs", "show"),
    ("jobs", "retry"),
    ("jobs", "cancel"),
    ("jobs", "delete"),
    ("definitions", "list"),
]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``orchestra *args`` and capture its output."""
    return subprocess.run(
        orchestra_argv(*args),
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def noop(payload: object = None) -> None:
    """A job function (the CLI never runs it)."""


@pytest.mark.parametrize("command", QUEUE_COMMANDS, ids=["-".join(c) for c in QUEUE_COMMANDS])
def test_every_queue_command_takes_app_dsn_and_schema_with_their_variables(
    e2e_env: dict[str, str], command: tuple[str, ...]
) -> None:
    """Its --help lists the three options and the variables they default to."""
    result = run(*command, "--help", env=e2e_env)
    assert result.returncode == 0, result.stderr
    text = one_line(result.stdout)
    for option in ("--app MODULE:CONFIG", "--dsn DSN", "--schema NAME"):
        assert option in text
    for variable in ("$ORCHESTRA_APP", "$ORCHESTRA_DSN", "$ORCHESTRA_SCHEMA"):
        assert variable in text


def test_the_help_states_the_precedence(e2e_env: dict[str, str]) -> None:
    """``orchestra --help`` says where the queue is found, in order."""
    text = one_line(run("--help", env=e2e_env).stdout)
    assert (
        "Each comes from its option, else its environment variable ($ORCHESTRA_APP, "
        "$ORCHESTRA_DSN, $ORCHESTRA_SCHEMA), else the Config that the app names, else the "
        "default: no app, the embedded PostgreSQL, schema _queue."
    ) in text


def test_schema_variable_serves_every_command_and_the_option_overrides_it(
    e2e_env: dict[str, str], test_dsn: str, schema: str
) -> None:
    """$ORCHESTRA_DSN and $ORCHESTRA_SCHEMA set once: migrate, jobs, definitions, health use them."""
    env = {**e2e_env, "ORCHESTRA_DSN": test_dsn, "ORCHESTRA_SCHEMA": schema}
    migrated = run("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert f"to schema {schema!r}" in one_line(migrated.stderr)
    with Config(test_dsn, schema=schema) as config:
        job_id = JobDefinition(config, name="from-env", job_function=noop).defer().id
    listing = run("jobs", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "from-env" in listing.stdout
    shown = run("jobs", "show", str(job_id), env=env)
    assert shown.returncode == 0 and f"job {job_id}" in shown.stdout, shown.stderr
    healthy = run("health", "--max-transaction-age-s", "86400", env=env)
    assert healthy.returncode == 0, healthy.stderr
    assert f"schema {schema!r}" in healthy.stdout

    elsewhere = run("jobs", "list", "--schema", f"{schema}_typo", env=env)
    assert elsewhere.returncode == 1
    assert f"schema '{schema}_typo' does not exist" in one_line(elsewhere.stderr)


def test_app_variable_gives_a_command_its_dsn_and_schema(
    e2e_env: dict[str, str], config: Config
) -> None:
    """$ORCHESTRA_APP alone (no DSN, no schema anywhere else): the app's Config is used."""
    job_id = JobDefinition(config, name="from-app", job_function=noop).defer().id
    env = {**e2e_env, "ORCHESTRA_APP": APP}
    listing = run("jobs", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "from-app" in listing.stdout and f"{job_id} " in listing.stdout
    definitions = run("definitions", "list", "--json", env=env)
    assert definitions.returncode == 0, definitions.stderr


def test_a_missing_schema_says_it_does_not_exist_and_how_to_create_it(
    e2e_env: dict[str, str], test_dsn: str, schema: str
) -> None:
    """A misspelt schema name: one line saying so, migrate offered only to create it."""
    result = run("jobs", "list", "--dsn", test_dsn, "--schema", schema, env=e2e_env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: schema {schema!r} does not exist; if that is the name you meant, create it "
        f"with `orchestra migrate --schema {schema}` (or Config.prepare_schema())"
    ]
