"""Bulk actions: a selection of jobs retried, cancelled or deleted, and every failed job of a
definition retried, through the JSON API and through the pages' confirmation step.

Refused (403) without ``allow_actions``; the pages' forms need the session's
CSRF token and a ticked box; bad input is a 400 with one line, and nothing is
written before the input is read in full.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from starlette.testclient import TestClient

from orchestra import Config, JobDefinition
from orchestra.dashboard import DashboardAuth, create_app
from orchestra.testing import run_until_empty
from tests.integration.test_dashboard_api import Seeded, charge, seed

BULK_ACTIONS = ("retry", "cancel", "delete")


@pytest.fixture
def seeded(config: Config) -> Seeded:
    """The test's schema with the dashboard tests' jobs."""
    return seed(config)


@pytest.fixture
def actions(config: Config) -> Iterator[TestClient]:
    """A dashboard with actions allowed, server errors as 500 responses."""
    app = create_app(config, allow_actions=True, auth=DashboardAuth())
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        yield client


@pytest.fixture
def read_only(config: Config) -> Iterator[TestClient]:
    """A read-only dashboard, server errors as 500 responses."""
    app = create_app(config, auth=DashboardAuth())
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        yield client


def digest(db: psycopg.Connection[Any], schema: str) -> tuple[Any, ...]:
    """Every row of the job tables, to tell that nothing was written."""
    rows = []
    for table in ("job", "job_history", "job_attempt", "job_dependency"):
        row = db.execute(
            sql.SQL(
                "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(table))
        ).fetchone()
        rows.append(row)
    return tuple(rows)


def _status(config: Config, job_id: int) -> str:
    return config.jobs.get(job_id, with_attempts=False).status


def _more_failures(config: Config, count: int) -> list[int]:
    card = JobDefinition(
        config,
        name="charge-card",
        job_function=charge,
        channel="billing",
        num_attempts=2,
        backoff="none",
    )
    ids = [card.defer({"to": f"user{n}@example.com"}).id for n in range(count)]
    run_until_empty(config, channel="billing")
    return ids


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, html
    return match.group(1)


# -- the JSON API ---------------------------------------------------------------------------


def test_api_bulk_actions_report_each_job(
    actions: TestClient, config: Config, seeded: Seeded
) -> None:
    """Each job is acted on or refused with its reason; unknown ids are refused, not fatal."""
    retried = actions.post(
        "/api/jobs/bulk/retry", json={"ids": [seeded.failed, seeded.waiting, 999_999]}
    )
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert (body["action"], body["done"], body["refused"]) == ("retry", 1, 2)
    failed, waiting, unknown = body["jobs"]
    assert failed == {"id": seeded.failed, "ok": True, "status": "available", "error": None}
    assert (waiting["id"], waiting["ok"], waiting["status"]) == (seeded.waiting, False, "waiting")
    assert waiting["error"].startswith(f"cannot retry job {seeded.waiting}: ")
    assert unknown == {"id": 999_999, "ok": False, "status": None, "error": "no such job"}
    assert _status(config, seeded.failed) == "available"

    cancelled = actions.post(
        "/api/jobs/bulk/cancel", json={"ids": [seeded.available, seeded.succeeded]}
    ).json()
    assert cancelled["done"] == 1
    refused, done = cancelled["jobs"]  # by id
    assert (refused["id"], refused["ok"], refused["status"]) == (
        seeded.succeeded,
        False,
        "succeeded",
    )
    assert refused["error"].startswith(f"cannot cancel job {seeded.succeeded}: ")
    assert done == {"id": seeded.available, "ok": True, "status": "cancelled", "error": None}
    assert _status(config, seeded.available) == "cancelled"


def test_api_bulk_delete_takes_dependents_before_their_dependencies(
    actions: TestClient, config: Config, seeded: Seeded
) -> None:
    """A dependency selected with its unfinished dependent goes too: highest id first."""
    config.jobs.cancel(seeded.waiting)
    deleted = actions.post(
        "/api/jobs/bulk/delete", json={"ids": [seeded.available, seeded.waiting]}
    ).json()
    assert deleted["done"] == 2, deleted
    assert [job["status"] for job in deleted["jobs"]] == [None, None]
    assert actions.get(f"/api/jobs/{seeded.available}").status_code == 404


def test_api_retry_failed_of_a_definition(
    actions: TestClient, config: Config, seeded: Seeded
) -> None:
    """Every failed job of the named definition, and of no other, is retried."""
    more = _more_failures(config, 3)
    response = actions.post("/api/jobs/retry-failed", json={"definition": "charge-card"})
    assert response.status_code == 200, response.text
    assert response.json() == {"definition": "charge-card", "retried": 4}
    for job_id in (seeded.failed, *more):
        assert _status(config, job_id) == "available"
    unknown = actions.post("/api/jobs/retry-failed", json={"definition": "no-such-thing"})
    assert unknown.json() == {"definition": "no-such-thing", "retried": 0}


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/api/jobs/bulk/retry", {}, "ids must be a list of job ids"),
        ("/api/jobs/bulk/retry", {"ids": []}, "select at least one job"),
        ("/api/jobs/bulk/retry", {"ids": "1,2"}, "ids must be a list of job ids"),
        ("/api/jobs/bulk/retry", {"ids": [True]}, "ids must be a list of job ids"),
        ("/api/jobs/bulk/retry", {"ids": [1.0]}, "ids must be a list of job ids"),
        ("/api/jobs/bulk/cancel", {"ids": ["1"]}, "ids must be a list of job ids"),
        ("/api/jobs/bulk/cancel", {"ids": [0]}, "id must be a job id (a positive integer)"),
        ("/api/jobs/bulk/cancel", {"ids": [-3]}, "id must be a job id (a positive integer)"),
        ("/api/jobs/bulk/delete", {"ids": [2**63]}, "id must be a job id (a positive integer)"),
        ("/api/jobs/bulk/delete", {"ids": list(range(1, 202))}, "at most 200 jobs at once"),
        ("/api/jobs/retry-failed", {}, "definition must be a definition's name"),
        ("/api/jobs/retry-failed", {"definition": 7}, "definition must be a definition's name"),
        ("/api/jobs/retry-failed", {"definition": " "}, "definition is required"),
        ("/api/jobs/retry-failed", {"definition": "x" * 129}, "at most 128 characters"),
        ("/api/jobs/retry-failed", {"definition": "a\nb"}, "line separator characters"),
    ],
)
def test_api_bad_bulk_input_is_refused_and_writes_nothing(
    actions: TestClient,
    config: Config,
    db: psycopg.Connection[Any],
    seeded: Seeded,
    path: str,
    body: dict[str, Any],
    needle: str,
) -> None:
    """A body that names no job, too many, or something else: 400 with one line."""
    before = digest(db, config.schema)
    response = actions.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error
    assert "\n" not in error
    assert digest(db, config.schema) == before


def test_api_bulk_needs_a_json_body(actions: TestClient, seeded: Seeded) -> None:
    """A form, invalid JSON or a JSON array: refused, as for one job's action."""
    form = actions.post("/api/jobs/bulk/retry", data={"ids": str(seeded.failed)})
    assert form.status_code == 415
    broken = actions.post(
        "/api/jobs/bulk/retry", content=b"{", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    listed = actions.post("/api/jobs/retry-failed", json=["charge-card"])
    assert listed.status_code == 400
    assert actions.get("/api/jobs/bulk/retry").status_code == 405


def test_bulk_actions_are_refused_when_not_allowed(
    read_only: TestClient, config: Config, db: psycopg.Connection[Any], seeded: Seeded
) -> None:
    """Read-only: 403 for every bulk route, pages and API, before anything is read or written."""
    before = digest(db, config.schema)
    for action in BULK_ACTIONS:
        api = read_only.post(f"/api/jobs/bulk/{action}", json={"ids": [seeded.failed]})
        assert api.status_code == 403, action
        assert "--allow-actions" in api.json()["error"]
        page = read_only.get(f"/jobs/bulk/{action}", params={"id": seeded.failed})
        assert page.status_code == 403
        form = read_only.post(
            f"/jobs/bulk/{action}", data={"id": seeded.failed, "confirm": "yes", "csrf": "0"}
        )
        assert form.status_code == 403
    retry_failed = read_only.post("/api/jobs/retry-failed", json={"definition": "charge-card"})
    assert retry_failed.status_code == 403
    assert read_only.get("/jobs/retry-failed", params={"definition": "x"}).status_code == 403
    assert read_only.post("/jobs/retry-failed", data={"definition": "x"}).status_code == 403
    assert digest(db, config.schema) == before
    jobs_page = read_only.get("/jobs").text
    assert 'form="bulk"' not in jobs_page and "/jobs/bulk/" not in jobs_page
    assert "/jobs/retry-failed" not in read_only.get("/definitions").text


# -- the pages --------------------------------------------------------------------------


def test_bulk_page_confirms_then_acts_on_the_selection(
    actions: TestClient, config: Config, seeded: Seeded
) -> None:
    """The list's selection, a confirmation listing what will happen, then each job's outcome."""
    jobs_page = actions.get("/jobs").text
    assert f'name="id" value="{seeded.failed}" form="bulk"' in jobs_page
    assert 'formaction="/jobs/bulk/retry"' in jobs_page

    confirm = actions.get(
        "/jobs/bulk/retry", params=[("id", seeded.failed), ("id", seeded.waiting), ("id", 999_999)]
    )
    assert confirm.status_code == 200
    assert "samesite=strict" in confirm.headers["set-cookie"].lower()
    assert "Retry the 3 selected jobs?" in confirm.text
    assert "no: a waiting job cannot be retried" in confirm.text
    assert "no such job" in confirm.text
    assert "Yes, retry 1 job" in confirm.text
    # Only the jobs that can be retried are carried by the form.
    assert re.findall(r'name="id" value="(\d+)"', confirm.text) == [str(seeded.failed)]
    token = _csrf(confirm.text)

    unticked = actions.post("/jobs/bulk/retry", data={"csrf": token, "id": seeded.failed})
    assert unticked.status_code == 400
    assert "Tick the box to confirm." in unticked.text
    assert _status(config, seeded.failed) == "failed"

    done = actions.post(
        "/jobs/bulk/retry",
        data={"csrf": token, "confirm": "yes", "id": [seeded.failed, seeded.waiting]},
    )
    assert done.status_code == 200
    assert "1 job retried; 1 refused." in done.text
    assert f"cannot retry job {seeded.waiting}: " in done.text
    assert _status(config, seeded.failed) == "available"


def test_bulk_page_of_jobs_none_of_which_can_be_acted_on(
    actions: TestClient, seeded: Seeded
) -> None:
    """Nothing to do: 409, no form."""
    page = actions.get("/jobs/bulk/cancel", params={"id": seeded.succeeded})
    assert page.status_code == 409
    assert "None of the selected jobs can be cancelled now." in page.text
    assert 'name="csrf"' not in page.text


def test_bulk_form_needs_this_sessions_token(
    actions: TestClient, config: Config, db: psycopg.Connection[Any], seeded: Seeded
) -> None:
    """A forged token, another browser's token, or none: 403, nothing written."""
    confirm = actions.get("/jobs/bulk/delete", params={"id": seeded.cancelled})
    token = _csrf(confirm.text)
    before = digest(db, config.schema)
    for csrf in ("", "0" * 64, token.upper()):
        forged = actions.post(
            "/jobs/bulk/delete", data={"csrf": csrf, "confirm": "yes", "id": seeded.cancelled}
        )
        assert forged.status_code == 403, csrf
    with TestClient(actions.app) as stranger:
        replay = stranger.post(
            "/jobs/bulk/delete", data={"csrf": token, "confirm": "yes", "id": seeded.cancelled}
        )
        assert replay.status_code == 403
    assert digest(db, config.schema) == before


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ([], "select at least one job (id)"),
        ([("id", "")], "id must be a job id (a positive integer), got ''"),
        ([("id", "abc")], "id must be a job id"),
        ([("id", "0")], "id must be a job id"),
        ([("id", "9223372036854775808")], "id must be a job id"),
        ([("id", "\uff11")], "id must be a job id"),
        ([("id", "1\x00")], "id must be a job id"),
        ([("id", str(n)) for n in range(1, 202)], "at most 200 jobs at once, got 201"),
    ],
)
def test_bulk_page_refuses_a_bad_selection(
    actions: TestClient,
    config: Config,
    db: psycopg.Connection[Any],
    seeded: Seeded,
    query: list[tuple[str, str]],
    needle: str,
) -> None:
    """Ids that are no job ids, none, or too many: a 400 page with one line; nothing written."""
    before = digest(db, config.schema)
    page = actions.get("/jobs/bulk/retry", params=urllib.parse.urlencode(query))
    assert page.status_code == 400
    assert needle in html.unescape(page.text)
    token = _csrf(actions.get("/jobs/bulk/retry", params={"id": seeded.failed}).text)
    form = actions.post(
        "/jobs/bulk/retry",
        content=urllib.parse.urlencode([("csrf", token), ("confirm", "yes"), *query]),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 400
    assert needle in html.unescape(form.text)
    assert digest(db, config.schema) == before


def test_retry_failed_page_confirms_then_retries_and_says_how_many(
    actions: TestClient, config: Config, seeded: Seeded
) -> None:
    """From the definitions page and the filtered list, a confirmation with the count, a flash."""
    more = _more_failures(config, 2)
    assert 'href="/jobs/retry-failed?definition=charge-card"' in actions.get("/definitions").text
    listed = actions.get("/jobs", params={"definition": "charge-card"}).text
    assert "Retry all 3 failed of charge-card" in listed

    confirm = actions.get("/jobs/retry-failed", params={"definition": "charge-card"})
    assert confirm.status_code == 200
    assert '<dd id="failed-count">3</dd>' in confirm.text
    token = _csrf(confirm.text)

    unticked = actions.post("/jobs/retry-failed", data={"csrf": token, "definition": "charge-card"})
    assert unticked.status_code == 400
    assert "Tick the box to confirm." in unticked.text
    forged = actions.post(
        "/jobs/retry-failed",
        data={"csrf": "0" * 64, "confirm": "yes", "definition": "charge-card"},
    )
    assert forged.status_code == 403
    assert _status(config, seeded.failed) == "failed"

    done = actions.post(
        "/jobs/retry-failed", data={"csrf": token, "confirm": "yes", "definition": "charge-card"}
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/jobs?definition=charge-card&retried=3"
    after = actions.get(done.headers["location"]).text
    assert "3 failed jobs of charge-card were retried." in after
    for job_id in (seeded.failed, *more):
        assert _status(config, job_id) == "available"


@pytest.mark.parametrize(
    ("definition", "status", "needle"),
    [
        ("", 400, "definition is required"),
        ("x" * 129, 400, "definition must be at most 128 characters, got 129"),
        ("a\x1bb", 400, "line separator characters are not allowed"),
        ("no-such-thing", 404, "no definition named 'no-such-thing' is stored"),
    ],
)
def test_retry_failed_page_refuses_a_bad_definition(
    actions: TestClient, seeded: Seeded, definition: str, status: int, needle: str
) -> None:
    """Missing, too long, unprintable or unknown: refused with one line."""
    page = actions.get("/jobs/retry-failed", params={"definition": definition})
    assert page.status_code == status
    assert needle in html.unescape(page.text)


def test_the_retried_notice_ignores_what_it_cannot_read(
    actions: TestClient, seeded: Seeded
) -> None:
    """The notice after a retry of failed jobs shows for a count only, with a definition."""
    shown = actions.get("/jobs", params={"definition": "charge-card", "retried": "2"}).text
    assert "2 failed jobs of charge-card were retried." in shown
    for retried in ("", "x", "-1", "²", "1" * 31):
        page = actions.get("/jobs", params={"definition": "charge-card", "retried": retried})
        assert page.status_code == 200
        assert "were retried" not in page.text and "was retried" not in page.text
    assert "retried" not in actions.get("/jobs", params={"retried": "2"}).text
