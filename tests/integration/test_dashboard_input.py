"""The dashboard answers control characters in its parameters with a 400, never a 500.

A NUL byte in a filter used to reach PostgreSQL, which refused it and the
dashboard answered 500. Every text filter of the job lists now refuses
control, format and line separator characters with a clear message (a page
for the HTML routes, JSON under /api); job ids in paths are bounded; hints
that only shape a page (``deleted``, ``done``) ignore what they cannot read.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from orchestra import Config
from orchestra.dashboard import DashboardAuth, create_app
from orchestra.testing import run_until_empty
from tests.unit._support import define

#: Percent-encoded values holding a character of each refused kind.
BAD_VALUES = {
    "nul": "%00",
    "nul-inside": "mail%00x",
    "line-feed": "mail%0Aforged",
    "crlf": "%0D%0ASet-Cookie:%20evil=1",
    "tab": "a%09b",
    "escape": "%1B%5B31m",
    "delete": "%7F",
    "next-line": "%C2%85",
    "bidi-override": "%E2%80%AEevil",
    "zero-width-space": "a%E2%80%8Bb",
    "line-separator": "a%E2%80%A8b",
    "paragraph-separator": "a%E2%80%A9b",
}
FILTERS = ("definition", "channel", "status", "order", "limit", "offset", "q")


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    """The dashboard of the test's schema (actions allowed), server errors as 500 responses."""
    app = create_app(config, allow_actions=True, auth=DashboardAuth())
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture
def job_id(config: Config) -> int:
    """A finished job, so that the job pages have something to show."""
    definition = define(config, name="send-email", channel="mail")
    handle = definition.defer({"to": "ada"})
    run_until_empty(config, channel="mail")
    return handle.id


@pytest.mark.parametrize("name", FILTERS)
def test_api_jobs_refuses_a_control_character_in_a_filter_with_400_json(
    client: TestClient, name: str
) -> None:
    """/api/jobs: 400 and a JSON error naming the parameter, for each kind of character."""
    for kind, value in BAD_VALUES.items():
        response = client.get(f"/api/jobs?{name}={value}")
        assert response.status_code == 400, (kind, response.text)
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["status"] == 400
        assert body["error"].startswith(f"{name}: "), (kind, body)


@pytest.mark.parametrize("name", FILTERS)
def test_jobs_page_refuses_a_control_character_in_a_filter_with_a_400_page(
    client: TestClient, name: str
) -> None:
    """/jobs: 400 and the error page saying which parameter was wrong, for each kind."""
    for kind, value in BAD_VALUES.items():
        response = client.get(f"/jobs?{name}={value}")
        assert response.status_code == 400, (kind, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert "Bad request" in response.text
        assert f"{name}: " in response.text, kind


def test_the_refusal_shows_the_character_escaped(client: TestClient) -> None:
    """The message quotes the character as an escape, never raw."""
    error = client.get("/api/jobs?definition=a%0Ab").json()["error"]
    assert "\\n" in error
    assert "\n" not in error
    assert "at index 1" in error


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/%00",
        "/jobs/1%00",
        "/jobs/" + "9" * 5_000,
        "/jobs/" + "9" * 5_000 + "/retry",
        "/api/jobs/%00",
        "/api/jobs/" + "9" * 5_000,
        "/api/jobs/1%0A",
    ],
    ids=[
        "nul",
        "digit-then-nul",
        "5000-digits",
        "5000-digits-action",
        "api-nul",
        "api-5000-digits",
        "api-line-feed",
    ],
)
def test_a_job_id_path_that_is_no_job_id_is_not_found(client: TestClient, path: str) -> None:
    """Path parameters: anything but a bounded run of digits is a 404, JSON under /api."""
    response = client.get(path)
    assert response.status_code == 404, response.text
    if path.startswith("/api/"):
        assert response.json()["status"] == 404


def test_an_action_on_a_job_id_too_long_to_be_one_is_not_found(client: TestClient) -> None:
    """POST /api/jobs/<5000 digits>/retry: 404, not 500."""
    response = client.post("/api/jobs/" + "9" * 5_000 + "/retry", json={})
    assert response.status_code == 404, response.text


@pytest.mark.parametrize(
    "value",
    ["%00", "%C2%B2", "9" * 5_000, "%EF%BC%91", "-1"],
    ids=["nul", "superscript-two", "5000-digits", "fullwidth-one", "negative"],
)
def test_page_hints_ignore_what_they_cannot_read(
    client: TestClient, job_id: int, value: str
) -> None:
    """``deleted`` (job list) and ``done`` (job page) only add a notice: a bad one is ignored."""
    listing = client.get(f"/jobs?deleted={value}")
    assert listing.status_code == 200, listing.text
    assert "was deleted" not in listing.text
    job = client.get(f"/jobs/{job_id}?done={value}")
    assert job.status_code == 200, job.text


def test_a_deleted_notice_still_shows_for_a_job_id(client: TestClient, job_id: int) -> None:
    """The hint keeps working for what the dashboard itself sends."""
    assert f"Job {job_id} was deleted." in client.get(f"/jobs?deleted={job_id}").text


def test_printable_filters_still_filter(client: TestClient, job_id: int) -> None:
    """Names with spaces or non-ASCII letters are not refused; they just match nothing here."""
    assert client.get("/api/jobs?definition=send-email").json()["total"] == 1
    for value in ("two%20words", "w%C3%B6rker", "%F0%9F%8E%89"):
        response = client.get(f"/api/jobs?definition={value}")
        assert response.status_code == 200, response.text
        assert response.json()["total"] == 0


def test_a_json_body_nested_too_deeply_is_refused_with_400(client: TestClient, job_id: int) -> None:
    """A small body of nested brackets exceeds the JSON parser's depth: 400, job untouched."""
    response = client.post(
        f"/api/jobs/{job_id}/retry",
        content=b"[" * 10_000,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "the body is nested too deeply"
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"


@pytest.mark.parametrize(
    "path",
    [
        "/charts?hours={}",
        "/api/charts?hours={}",
        "/live/charts?hours={}",
        "/live/jobs?q={}",
        "/jobs/bulk/retry?id={}",
        "/jobs/bulk/delete?id=1&id={}",
        "/jobs/retry-failed?definition={}",
    ],
)
def test_new_routes_refuse_each_kind_of_control_character_with_400(
    client: TestClient, job_id: int, path: str
) -> None:
    """The charts' range, the search, a selection's ids and a definition: 400, never 500."""
    for kind, value in BAD_VALUES.items():
        response = client.get(path.format(value))
        assert response.status_code == 400, (kind, response.text)
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_bulk_body_nested_too_deeply_is_refused_with_400(client: TestClient, job_id: int) -> None:
    """As for one job: a body of nested brackets is a 400, the job untouched."""
    for path in ("/api/jobs/bulk/retry", "/api/jobs/retry-failed"):
        response = client.post(
            path, content=b"[" * 10_000, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "the body is nested too deeply"
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"
