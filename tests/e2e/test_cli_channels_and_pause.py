"""The command line of several channels per worker and of pausing, as child processes.

``orchestra daemon --channel A --channel B`` serves both; a bad or repeated
--channel is one line and starts nothing. ``orchestra pause`` and ``orchestra
resume`` say what changed, refuse bad input with one line and write nothing
then; ``orchestra definitions list`` and ``orchestra health`` show what is
paused.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from orchestra import JobDefinition
from orchestra.testing import wait_until
from tests.e2e._support import APP, REPO, DaemonFactory, Queue, one_line, orchestra_argv


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``orchestra *args`` on the test's app; its output captured."""
    return subprocess.run(
        orchestra_argv(*args, "--app", APP),
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pauses(queue: Queue) -> list[tuple[Any, ...]]:
    """Every stored pause: paused channels, then paused definitions."""
    return queue.rows("SELECT channel FROM {s}.channel_pause ORDER BY 1") + queue.rows(
        "SELECT name FROM {s}.job_definition WHERE paused ORDER BY 1"
    )


def test_a_daemon_given_channel_twice_serves_both(
    queue: Queue, daemons: DaemonFactory, jobs: dict[str, JobDefinition[Any]]
) -> None:
    """Both channels are in the start-up line and the worker row, and jobs of both run."""
    daemon = daemons.start(extra=["--channel", "other", "--channel", "_default"])
    daemon.wait_for_log("carries")
    line = next(line for line in daemon.log().splitlines() if "carries" in line)
    assert "serving channels 'other', '_default' with concurrency 1" in line, line
    assert queue.rows("SELECT channel, channels FROM {s}.worker WHERE role = 'worker'") == [
        ("other", ["other", "_default"])
    ]
    in_default = jobs["quick"].defer({})
    # A job of a carried definition that waits on the other channel (deferred
    # before its definition moved there, say).
    in_other = queue.value(
        "INSERT INTO {s}.job (definition, channel, payload, max_attempts)"
        " VALUES ('quick', 'other', '{{}}', 1) RETURNING id"
    )
    wait_until(
        lambda: (
            {queue.job(in_default.id)["status"], queue.job(in_other)["status"]} == {"succeeded"}
        ),
        timeout=30,
        message=daemons.logs(),
    )


@pytest.mark.parametrize(
    ("channels", "problem"),
    [
        (["mail", "mail"], "--channel: 'mail' is given twice"),
        (["mail", "bad name"], "--channel: 'bad name' may only use letters"),
    ],
)
def test_a_bad_or_repeated_channel_is_one_line_and_starts_nothing(
    queue: Queue, e2e_env: dict[str, str], channels: list[str], problem: str
) -> None:
    """Exit 2, one error line naming --channel, and no worker row."""
    argv = ["daemon", "--role", "worker"]
    for channel in channels:
        argv += ["--channel", channel]
    result = run_cli(*argv, env=e2e_env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert problem in one_line(result.stderr), output
    assert len(result.stderr.strip().splitlines()) == 1, output
    assert queue.rows("SELECT id FROM {s}.worker") == []


def test_pause_and_resume_say_what_changed(
    queue: Queue, e2e_env: dict[str, str], jobs: dict[str, JobDefinition[Any]]
) -> None:
    """A pause, a repeated pause, listings that show it, a resume, a repeated resume."""
    with jobs["quick"].config.connection() as conn:
        jobs["quick"].upsert(conn)
    steps = [
        (("pause", "--channel", "mail"), "paused channel 'mail'"),
        (("pause", "--channel", "mail"), "channel 'mail' was already paused"),
        (("pause", "--definition", "quick"), "paused definition 'quick'"),
    ]
    for args, said in steps:
        result = run_cli(*args, env=e2e_env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert said in result.stdout
    assert pauses(queue) == [("mail",), ("quick",)]
    listed = run_cli("definitions", "list", env=e2e_env)
    assert "quick (paused)" in listed.stdout, listed.stdout
    health = run_cli("health", env=e2e_env)
    assert health.returncode == 0, health.stdout + health.stderr
    assert "paused: channel 'mail', definition 'quick'" in one_line(health.stdout)
    steps = [
        (("resume", "--channel", "mail"), "resumed channel 'mail'"),
        (("resume", "--definition", "quick"), "resumed definition 'quick'"),
        (("resume", "--definition", "quick"), "definition 'quick' was not paused"),
    ]
    for args, said in steps:
        result = run_cli(*args, env=e2e_env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert said in result.stdout
    assert pauses(queue) == []


@pytest.mark.parametrize(
    ("args", "code", "problem"),
    [
        (("pause",), 2, "give one of --channel NAME or --definition NAME"),
        (("pause", "--channel", "a", "--definition", "b"), 2, "give one of --channel"),
        (("pause", "--definition", "nope"), 1, "unknown definition 'nope'"),
        (("resume", "--definition", "nope"), 1, "unknown definition 'nope'"),
        (("pause", "--channel", "bad name"), 2, "channel: 'bad name' may only use letters"),
        (("pause", "--channel", "x\u202ey"), 2, "--channel"),
    ],
)
def test_pause_refuses_bad_input_with_one_line_and_writes_nothing(
    queue: Queue, e2e_env: dict[str, str], args: tuple[str, ...], code: int, problem: str
) -> None:
    """No target, two targets, an unknown definition, a bad channel name: one line each."""
    result = run_cli(*args, env=e2e_env)
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output and result.stdout == ""
    assert problem in one_line(result.stderr), output
    assert len(result.stderr.strip().splitlines()) == 1, output
    assert pauses(queue) == []
