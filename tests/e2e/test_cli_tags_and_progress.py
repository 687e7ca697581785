"""Tags, metadata and progress on the command line, run as real processes.

``orchestra defer --tag --meta`` stores them (a bad one is one error line,
exit 2, and writes nothing), ``orchestra jobs list --tag`` filters on a tag and
shows the tags, ``orchestra jobs show`` prints tags, metadata and progress.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition
from tests._finished_jobs import finish_by_sql
from tests.e2e.test_cli_defer import defer, deferred_id, rows
from tests.e2e.test_cli_jobs import error_lines, ok, run


@pytest.fixture
def target(test_dsn: str, schema: str) -> list[str]:
    """The --dsn and --schema options that point the CLI at the test's schema."""
    return ["--dsn", test_dsn, "--schema", schema]


def test_defer_stores_the_tags_and_meta_given(
    config: Config, db: psycopg.Connection[Any], e2e_env: dict[str, str]
) -> None:
    """--tag (repeated) and --meta (a JSON object) are stored with the job."""
    result = defer(
        "echo", "{}", "--tag", "billing", "--tag", "eu", "--meta", '{"tenant": 42}', env=e2e_env
    )
    job_id = deferred_id(result)
    assert "tagged billing, eu" in result.stderr
    found = rows(db, config, "SELECT tags, meta FROM {s}.job WHERE id = %s", job_id)
    assert found == [(["billing", "eu"], {"tenant": 42})]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--tag", ""), "--tag: each tag must be a non-empty string"),
        (("--tag", "a\tb"), "--tag: must not contain control, format or line separator"),
        (("--meta", "[1, 2]"), "--meta: must be a JSON object such as"),
        (("--meta", '{"a": NaN}'), "--meta: not valid JSON: NaN is not a JSON value"),
    ],
)
def test_a_bad_tag_or_meta_is_one_error_line_and_writes_nothing(
    config: Config,
    db: psycopg.Connection[Any],
    e2e_env: dict[str, str],
    args: tuple[str, ...],
    expected: str,
) -> None:
    """Exit 2, one ``error:`` line naming the option, no job and no definition row."""
    result = defer("echo", "{}", *args, env=e2e_env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert rows(db, config, "SELECT count(*) FROM {s}.all_jobs") == [(0,)]
    assert rows(db, config, "SELECT count(*) FROM {s}.job_definition") == [(0,)]


def _noop(payload: Any = None) -> None:
    """A job function that does nothing (the CLI never runs jobs)."""


def test_jobs_list_filters_by_tag_and_show_prints_tags_meta_and_progress(
    config: Config,
    db: psycopg.Connection[Any],
    e2e_env: dict[str, str],
    target: list[str],
) -> None:
    """Only the tagged jobs, finished ones too, with a tags column; show prints all three."""
    mail = JobDefinition(config, name="send-mail", job_function=_noop)
    tagged = mail.defer({"to": "ada"}, tags=["billing", "eu"], meta={"tenant": 42})
    done = mail.defer({"to": "bob"}, tags=["billing"])
    mail.defer({"to": "cy"}, tags=["marketing"])
    db.execute(
        f'UPDATE "{config.schema}".job SET progress = %s WHERE id = %s',
        ['{"done": 3, "total": 10}', tagged.id],
    )
    finish_by_sql(db, config, done.id, "succeeded")

    table = ok(run("jobs", "list", "--tag", "billing", *target, env={**e2e_env, "COLUMNS": "160"}))
    assert f" {tagged.id} " in table and f" {done.id} " in table
    assert "marketing" not in table
    assert "billing,eu" in table
    assert "1-2 of 2 matching" in table
    wide = ok(run("jobs", "list", "--tag", "eu", "--wide", *target, env=e2e_env))
    assert "3/10 (30%)" in wide

    listed = json.loads(ok(run("jobs", "list", "--tag", "billing", "--json", *target, env=e2e_env)))
    assert [(j["id"], j["tags"], j["meta"]) for j in listed] == [
        (done.id, ["billing"], {}),
        (tagged.id, ["billing", "eu"], {"tenant": 42}),
    ]
    assert listed[1]["progress"] == {"done": 3, "total": 10}

    shown = ok(run("jobs", "show", str(tagged.id), *target, env=e2e_env))
    assert "billing, eu" in shown
    assert '{"tenant": 42}' in shown
    assert "3/10 (30%)" in shown


def test_a_tag_filter_with_a_control_character_is_refused(
    e2e_env: dict[str, str], target: list[str], config: Config
) -> None:
    """Exit 2 with one line naming --tag."""
    result = run("jobs", "list", "--tag", "a\x1b[2J", *target, env=e2e_env)
    (line,) = error_lines(result, 2)
    assert "--tag" in line
