"""``orchestra jobs ...`` and ``orchestra definitions list`` run as real processes.

Failed jobs are listed, retried with a fresh budget and deleted in bulk; jobs
are found by id and listed by status with limit, offset and order, with no
hidden time window. Exit codes
(``orchestra/cli/``): 0 success, 1 unknown id or wrong state, 2 usage error;
errors are one line on stderr, without a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import subprocess
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition
from tests._finished_jobs import finish_by_sql
from tests.e2e._support import REPO, one_line, orchestra_argv


def noop(payload: Any = None) -> None:
    """A job function that does nothing (the CLI never runs jobs)."""


def run(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``orchestra *args``; ``stdin`` is what a person would type (none by default)."""
    return subprocess.run(
        orchestra_argv(*args),
        env=env,
        cwd=REPO,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Assert exit 0 without a traceback of the CLI itself (a job's may be shown); return stdout."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def error_lines(result: subprocess.CompletedProcess[str], code: int) -> list[str]:
    """Assert exit ``code`` and no traceback; return stderr's ``error:`` lines."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output, output
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def target(test_dsn: str, schema: str) -> list[str]:
    """The --dsn and --schema options that point the CLI at the test's schema."""
    return ["--dsn", test_dsn, "--schema", schema]


@pytest.fixture
def definitions(config: Config) -> dict[str, JobDefinition[Any]]:
    """Two definitions on the test's migrated schema."""
    return {
        "mail": JobDefinition(
            config, name="send-mail", job_function=noop, channel="mail", num_attempts=3
        ),
        "report": JobDefinition(
            config, name="report", job_function=noop, cron="*/5 * * * *", max_concurrency=2
        ),
    }


def sql(db: psycopg.Connection[Any], config: Config, query: str, *params: Any) -> list[Any]:
    """Run ``query`` with ``{s}`` as the quoted test schema; return its rows."""
    cursor = db.execute(query.replace("{s}", f'"{config.schema}"'), list(params))
    return cursor.fetchall() if cursor.description else []


def fail(db: psycopg.Connection[Any], config: Config, job_id: int, error: str = "boom") -> None:
    """Finalize a job as failed, with a logged attempt, as a worker would have."""
    sql(
        db,
        config,
        "UPDATE {s}.job SET attempt = max_attempts,"
        " started_at = now() - interval '2 seconds', last_error = %s WHERE id = %s",
        f"ValueError: {error}",
        job_id,
    )
    sql(
        db,
        config,
        "INSERT INTO {s}.job_attempt"
        " (job_id, attempt, worker_id, worker_name, started_at, outcome, error, traceback)"
        " VALUES (%s, 1, 7, 'e2e-worker', now() - interval '2 seconds', 'failed', %s, %s)",
        job_id,
        f"ValueError: {error}",
        f'Traceback (most recent call last):\n  File "jobs.py", line 3\nValueError: {error}',
    )
    finish_by_sql(db, config, job_id, "failed")


def status_of(db: psycopg.Connection[Any], config: Config, job_id: int) -> str | None:
    """The job's status, unfinished or finished; None once it is gone."""
    rows = sql(
        db,
        config,
        "SELECT status::text FROM {s}.job WHERE id = %s"
        " UNION ALL SELECT status::text FROM {s}.job_history WHERE id = %s",
        job_id,
        job_id,
    )
    return str(rows[0][0]) if rows else None


def test_help_lists_the_management_commands(e2e_env: dict[str, str]) -> None:
    """``orchestra --help`` lists jobs and definitions; ``jobs --help`` every subcommand."""
    top = ok(run("--help", env=e2e_env))
    assert "jobs" in top and "definitions" in top
    sub = ok(run("jobs", "--help", env=e2e_env))
    for command in ("list", "show", "retry", "cancel", "delete"):
        assert command in sub
    listing = ok(run("jobs", "list", "--help", env=e2e_env))
    for option in ("--status", "--definition", "--channel", "--limit", "--offset", "--order"):
        assert option in listing


def test_jobs_list_as_a_table_and_as_json(
    e2e_env: dict[str, str],
    target: list[str],
    config: Config,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
) -> None:
    """``jobs list`` shows every job, newest first, filters by status, and pages."""
    mail = definitions["mail"]
    ids = [mail.defer({"to": f"u{i}@example.com"}).id for i in range(3)]
    report = definitions["report"].defer()
    fail(db, config, ids[0], "mailbox full")
    # No hidden time window: a job created a month ago is listed too.
    sql(
        db,
        config,
        "UPDATE {s}.job SET created_at = now() - interval '30 days' WHERE id = %s",
        ids[0],
    )

    table = ok(run("jobs", "list", *target, env=e2e_env))
    for job_id in [*ids, report.id]:
        assert f" {job_id} " in table
    assert "send-mail" in table and "failed" in table and "available" in table
    assert "ValueError: ma" in table  # cut to the width left: 80 columns in a pipe
    wide = ok(run("jobs", "list", *target, env={**e2e_env, "COLUMNS": "160"}))
    assert "ValueError: mailbox full" in wide
    assert "1-4 of 4 matching, newest first" in one_line(table)

    everything = json.loads(ok(run("jobs", "list", "--json", *target, env=e2e_env)))
    assert [job["id"] for job in everything] == [report.id, *ids[::-1]]
    oldest = everything[-1]
    assert (oldest["status"], oldest["payload"], oldest["attempts"]) == (
        "failed",
        {"to": "u0@example.com"},
        None,
    )
    assert dt.datetime.fromisoformat(oldest["created_at"]) < dt.datetime.fromisoformat(
        everything[0]["created_at"]
    )

    failed = json.loads(
        ok(
            run(
                "jobs",
                "list",
                "--status",
                "failed",
                "--status",
                "cancelled",
                "--json",
                *target,
                env=e2e_env,
            )
        )
    )
    assert [job["id"] for job in failed] == [ids[0]]
    page = json.loads(
        ok(
            run(
                "jobs", "list", "--definition", "send-mail", "--channel", "mail",
                "--order", "asc", "--limit", "1", "--offset", "1", "--json", *target,
                env=e2e_env,
            )
        )
    )  # fmt: skip
    assert [job["id"] for job in page] == [ids[1]]
    empty = ok(run("jobs", "list", "--status", "running", *target, env=e2e_env))
    assert "no jobs match" in empty


def test_jobs_show_with_attempts_error_and_traceback(
    e2e_env: dict[str, str],
    target: list[str],
    config: Config,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
) -> None:
    """``jobs show`` prints the job, its attempt log and the last traceback; --json all of it."""
    job_id = definitions["mail"].defer({"to": "ada@example.com"}).id
    fail(db, config, job_id, "mailbox [full]")

    shown = ok(run("jobs", "show", str(job_id), *target, env=e2e_env))
    assert f"job {job_id}" in shown
    for text in ("failed", "send-mail", "ada@example.com", "3 of 3", "e2e-worker"):
        assert text in shown
    assert "ValueError: mailbox [full]" in shown  # printed literally, not read as markup
    assert "traceback of attempt 1" in shown and "Traceback (most recent call last):" in shown

    document = json.loads(ok(run("jobs", "show", str(job_id), "--json", *target, env=e2e_env)))
    assert (document["id"], document["status"], document["archived"]) == (job_id, "failed", True)
    assert document["last_error"] == "ValueError: mailbox [full]"
    (attempt,) = document["attempts"]
    assert (attempt["attempt"], attempt["outcome"], attempt["worker_name"]) == (
        1,
        "failed",
        "e2e-worker",
    )
    assert attempt["traceback"].startswith("Traceback")
    assert dt.datetime.fromisoformat(attempt["finished_at"]).tzinfo is not None


def test_jobs_retry_by_id_and_every_failed_job(
    e2e_env: dict[str, str],
    target: list[str],
    config: Config,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
) -> None:
    """``jobs retry ID`` and ``jobs retry --failed`` put failed jobs back with a fresh budget."""
    ids = [definitions["mail"].defer({}).id for _ in range(3)]
    for job_id in ids:
        fail(db, config, job_id)

    assert ok(run("jobs", "retry", str(ids[0]), *target, env=e2e_env)).strip() == (
        f"retried job {ids[0]}: now available"
    )
    bulk = ok(run("jobs", "retry", "--failed", "--definition", "send-mail", *target, env=e2e_env))
    assert bulk.strip() == "retried 2 failed job(s) of 'send-mail'"
    rows = sql(db, config, "SELECT status::text, attempt, max_attempts FROM {s}.job ORDER BY id")
    assert rows == [("available", 3, 6)] * 3  # attempt numbers go on, num_attempts more


def test_jobs_retry_reports_each_refused_id_and_exits_1(
    e2e_env: dict[str, str],
    target: list[str],
    config: Config,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
) -> None:
    """Of several ids, the good ones are retried and each refused one is one error line; exit 1."""
    good = definitions["mail"].defer({}).id
    busy = definitions["mail"].defer({}).id
    fail(db, config, good)
    sql(
        db,
        config,
        "UPDATE {s}.job SET status = 'running', lock_token = gen_random_uuid() WHERE id = %s",
        busy,
    )
    result = run("jobs", "retry", str(good), str(busy), "999999", *target, env=e2e_env)
    assert error_lines(result, 1) == [
        f"error: cannot retry job {busy}: it is running",
        "error: unknown job id(s): 999999",
    ]
    assert result.stdout.strip() == f"retried job {good}: now available"
    assert status_of(db, config, busy) == "running"


def test_jobs_cancel(
    e2e_env: dict[str, str],
    target: list[str],
    config: Config,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
) -> None:
    """``jobs cancel`` cancels unfinished jobs and refuses finalized ones (exit 1)."""
    first, second = (definitions["mail"].defer({}).id for _ in range(2))
    assert ok(run("jobs", "cancel", str(first), str(second), *target, env=e2e_env)).split("\n")[
        :2
    ] == [f"cancelled job {first}", f"cancelled job {second}"]
    assert (status_of(db, config, first), status_of(db, config, second)) == (
        "cancelled",
        "cancelled",
    )
    again = run("jobs", "cancel", str(first), *target, env=e2e_env)
    assert error_lines(again, 1) == [f"error: cannot cancel job {first}: it was already cancelled"]


def test_jobs_delete_by_id_and_every_failed_job_after_confirmation(
    e2e_env: dict[str, str],
    target: list[str],
    config: Config,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
) -> None:
    """``jobs delete ID`` deletes; ``jobs delete --failed`` asks first, unless --yes."""
    mail = definitions["mail"]
    single, *failed = (mail.defer({}).id for _ in range(4))
    for job_id in failed:
        fail(db, config, job_id)

    assert ok(run("jobs", "delete", str(single), *target, env=e2e_env)).strip() == (
        f"deleted job {single}"
    )
    assert status_of(db, config, single) is None

    unanswered = run("jobs", "delete", "--failed", *target, env=e2e_env)
    assert error_lines(unanswered, 1) == [
        "error: nothing deleted: not confirmed (pass --yes to skip the question)"
    ]
    assert "delete 3 failed job(s)?" in unanswered.stderr
    declined = run("jobs", "delete", "--failed", *target, env=e2e_env, stdin="n\n")
    assert declined.returncode == 1
    assert [status_of(db, config, job_id) for job_id in failed] == ["failed"] * 3

    confirmed = run(
        "jobs", "delete", "--failed", "--definition", "send-mail", *target, env=e2e_env, stdin="y\n"
    )
    assert ok(confirmed).strip() == "deleted 3 failed job(s) of 'send-mail'"
    assert sql(db, config, "SELECT count(*) FROM {s}.job_attempt") == [(0,)]
    assert ok(run("jobs", "delete", "--failed", "--yes", *target, env=e2e_env)).strip() == (
        "no failed jobs"
    )


def test_jobs_delete_refuses_a_job_an_unfinished_job_depends_on(
    e2e_env: dict[str, str],
    target: list[str],
    config: Config,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
) -> None:
    """Deleting a dependency of an unfinished job exits 1 and names the dependent."""
    first = definitions["mail"].defer({}).id
    second = definitions["mail"].defer({}, depends_on=[first]).id
    result = run("jobs", "delete", str(first), *target, env=e2e_env)
    assert error_lines(result, 1) == [
        f"error: cannot delete job {first}: job {second} depends on it and is not finished"
    ]
    assert status_of(db, config, first) == "available"


def test_definitions_list_as_a_table_and_as_json(
    e2e_env: dict[str, str],
    target: list[str],
    config: Config,
    db: psycopg.Connection[Any],
    definitions: dict[str, JobDefinition[Any]],
) -> None:
    """``definitions list`` shows every stored definition with its settings and job counts."""
    failed = definitions["mail"].defer({}).id
    definitions["mail"].defer({})
    definitions["report"].defer()
    fail(db, config, failed)

    table = ok(run("definitions", "list", *target, env=e2e_env))
    for text in ("send-mail", "report", "mail", "cron */5 * * * *", "1 available", "1 failed"):
        assert text in table, table

    document = json.loads(ok(run("definitions", "list", "--json", *target, env=e2e_env)))
    assert [d["name"] for d in document] == ["report", "send-mail"]
    report, mail = document
    assert (report["cron"], report["max_concurrency"]) == ("*/5 * * * *", 2)
    assert (mail["channel"], mail["num_attempts"]) == ("mail", 3)
    assert mail["counts"] == {
        "waiting": 0,
        "scheduled": 0,
        "available": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 1,
        "cancelled": 0,
    }
    dt.datetime.fromisoformat(mail["last_heartbeat_at"])


@pytest.mark.parametrize("command", [("jobs", "show"), ("jobs", "cancel"), ("jobs", "delete")])
def test_an_unknown_id_exits_1_with_one_line(
    e2e_env: dict[str, str], target: list[str], config: Config, command: tuple[str, ...]
) -> None:
    """An id that does not exist is one ``error:`` line and exit 1, without a traceback."""
    result = run(*command, "424242", *target, env=e2e_env)
    assert error_lines(result, 1) == ["error: unknown job id(s): 424242"]
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "list", "--limit", "0"),
        ("jobs", "list", "--status", "bogus"),
        ("jobs", "list", "--order", "sideways"),
        ("jobs", "show", "abc"),
        ("jobs", "retry"),
        ("jobs", "retry", "1", "--failed"),
        ("jobs", "delete", "--definition", "x", "1"),
        ("jobs", "cancel"),
        ("definitions", "list", "--bogus"),
    ],
    ids=lambda args: "-".join(args).replace("--", ""),
)
def test_bad_options_are_usage_errors(
    e2e_env: dict[str, str], target: list[str], args: tuple[str, ...]
) -> None:
    """A bad option or argument exits 2 with click's usage message, before any database work."""
    result = run(*args, *target, env=e2e_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Usage:" in result.stderr and "Traceback" not in result.stderr


def test_an_unmigrated_schema_says_to_migrate(
    e2e_env: dict[str, str], target: list[str], schema: str
) -> None:
    """On a schema that was never migrated, ``jobs list`` exits 1 and says what to run."""
    result = run("jobs", "list", *target, env=e2e_env)
    (line,) = error_lines(result, 1)
    assert schema in line and "orchestra migrate" in line


LONG_NAME = "send-welcome-email-to-new-customer"
LONG_ERROR = "upstream timed out while talking to the partner API of the mail provider"


@pytest.fixture
def long_jobs(
    config: Config, db: psycopg.Connection[Any], definitions: dict[str, JobDefinition[Any]]
) -> list[int]:
    """Three jobs of a definition with a long name, one failed with a long error, and a short one."""
    welcome = JobDefinition(config, name=LONG_NAME, job_function=noop, channel="mail")
    ids = [welcome.defer({}).id for _ in range(3)]
    fail(db, config, ids[0], LONG_ERROR)
    ids.append(definitions["report"].defer().id)
    return ids


def test_jobs_list_fits_80_columns_without_breaking_a_name(
    e2e_env: dict[str, str], target: list[str], long_jobs: list[int]
) -> None:
    """In a pipe (80 columns): one line per job, names whole, the error cut to what is left."""
    table = ok(run("jobs", "list", *target, env=e2e_env))
    lines = table.splitlines()
    assert all(len(line) <= 80 for line in lines), table
    assert lines[0].split() == ["id", "definition", "status", "attempt", "last", "error"]
    rows = [line for line in lines if line.split() and line.split()[0].isdigit()]
    assert [int(row.split()[0]) for row in rows] == long_jobs[::-1]
    assert sum(LONG_NAME in row for row in rows) == 3  # never folded onto a second line
    (failed,) = [row for row in rows if "failed" in row]
    error = failed[failed.index("ValueError") :]
    assert error.endswith("…") and f"ValueError: {LONG_ERROR}".startswith(error[:-1]), failed
    assert lines[-1] == "1-4 of 4 matching, newest first (--wide: channel, priority, times)"


def test_jobs_list_wide_shows_every_column_on_one_line_per_job(
    e2e_env: dict[str, str], target: list[str], long_jobs: list[int]
) -> None:
    """--wide: channel, priority and times too, and the whole error, however long the line."""
    table = ok(run("jobs", "list", "--wide", *target, env=e2e_env))
    lines = table.splitlines()
    assert " ".join(lines[0].split()) == (
        "id definition channel status priority attempt run at (UTC) created at (UTC) "
        "finalized at (UTC) last error"
    )
    rows = [line for line in lines if line.split() and line.split()[0].isdigit()]
    assert len(rows) == len(long_jobs)
    (failed,) = [row for row in rows if "failed" in row]
    assert f"ValueError: {LONG_ERROR}" in failed
    assert " mail " in failed
    assert len(failed) > 80


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """Run ``argv`` with its stdout on a pseudo-terminal; return what it wrote there."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    return b"".join(chunks).decode("utf-8", errors="replace")


#: An SGR sequence that sets a colour (foreground or background, 8, 16, 256 or RGB).
COLOUR = re.compile(r"\x1b\[(?:[0-9]+;)*(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9]+)*m")


def test_jobs_list_is_coloured_on_a_terminal_only(
    e2e_env: dict[str, str], target: list[str], long_jobs: list[int]
) -> None:
    """A terminal gets colours, unless NO_COLOR; a pipe never does, even with FORCE_COLOR."""
    argv = orchestra_argv("jobs", "list", *target)
    terminal = {**e2e_env, "TERM": "xterm-256color"}
    assert COLOUR.search(_on_a_terminal(argv, terminal))
    assert not COLOUR.search(_on_a_terminal(argv, {**terminal, "NO_COLOR": "1"}))
    for forced in ({"FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "1"}):
        piped = ok(run("jobs", "list", *target, env={**terminal, **forced}))
        assert "\x1b" not in piped, piped
