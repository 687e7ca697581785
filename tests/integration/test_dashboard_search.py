"""The jobs list's search (``q``): by id, payload text and error text, bounded, parameterised.

Through the JSON API (``/api/jobs?q=``) and the page (``/jobs?q=``), on the
schema :func:`tests.integration.test_dashboard_api.seed` fills.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from orchestra import Config, JobDefinition
from orchestra.dashboard import DashboardAuth, _data, create_app
from tests.integration.test_dashboard_api import Seeded, build, seed


@pytest.fixture
def seeded(config: Config) -> Seeded:
    """The test's schema with the dashboard tests' jobs."""
    return seed(config)


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    """A read-only dashboard, server errors as 500 responses."""
    app = create_app(config, auth=DashboardAuth())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _ids(client: TestClient, **params: str | int) -> list[int]:
    response = client.get("/api/jobs", params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["jobs"]]


def test_search_finds_a_job_by_its_id_first(client: TestClient, seeded: Seeded) -> None:
    """A number finds the job with that id, finished or not, first; then text that holds it."""
    found = _ids(client, q=str(seeded.failed))
    assert found[0] == seeded.failed
    # The other jobs hold the digit in their payloads ("2024-05"), newest first.
    assert found[1:] == [seeded.cancelled, seeded.waiting, seeded.available]
    assert _ids(client, q=f" #{seeded.waiting} ")[0] == seeded.waiting
    assert _ids(client, q=str(seeded.available), order="asc")[0] == seeded.available
    assert _ids(client, q="999999") == []


def test_search_finds_payload_and_error_text_case_insensitively(
    client: TestClient, seeded: Seeded
) -> None:
    """Text in a payload (as JSON text) or in the last error, in any case, in either table."""
    assert _ids(client, q="BOB@example") == [seeded.failed]  # payload, a finished job
    assert _ids(client, q="2024-06") == [seeded.waiting]  # payload, an unfinished job
    assert _ids(client, q="declined") == [seeded.failed]  # the last error
    assert _ids(client, q="example.com") == [seeded.failed, seeded.succeeded]
    page = client.get("/api/jobs", params={"q": "declined"}).json()
    assert page["q"] == "declined"
    assert page["total"] == 1
    assert page["search_window"] == _data.SEARCH_WINDOW


def test_search_treats_like_wildcards_as_text(
    client: TestClient, config: Config, seeded: Seeded
) -> None:
    """'%', '_' and '\\' match themselves only: a search for '%' is not a search for anything."""
    report = JobDefinition(config, name="build-report", job_function=build, channel="reports")
    percent = report.defer({"note": "100% done"}).id
    underscore = report.defer({"note": "a_b"}).id
    report.defer({"note": "axb"})  # what "a_b" would match if "_" stood for any character
    backslash = report.defer({"note": "C:\\temp"}).id
    assert _ids(client, q="%") == [percent]
    assert _ids(client, q="0% d") == [percent]
    assert _ids(client, q="a_b") == [underscore]
    # jsonb writes a backslash escaped in its text: "C:\\temp".
    assert _ids(client, q="\\") == [backslash]
    assert _ids(client, q="'; DROP TABLE job; --") == []
    assert client.get("/api/jobs").json()["total"] == 9  # nothing was dropped


def test_search_combines_with_filters_order_and_pages(client: TestClient, seeded: Seeded) -> None:
    """Status, definition and channel filters narrow a search; limit, offset and order page it."""
    assert _ids(client, q="2024", status="waiting") == [seeded.waiting]
    assert _ids(client, q="2024", definition="build-report") == [
        seeded.cancelled,
        seeded.waiting,
        seeded.available,
    ]
    assert _ids(client, q="2024", definition="send-email") == []
    assert _ids(client, q="2024", order="asc", limit=2) == [seeded.available, seeded.waiting]
    beyond = client.get("/api/jobs", params={"q": "2024", "offset": 10}).json()
    assert beyond["jobs"] == [] and beyond["total"] == 3  # the count, even past the last page


def test_search_text_is_looked_for_among_the_newest_jobs_only(
    client: TestClient, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the window of newest jobs per table is searched for text; an id is found at any age."""
    monkeypatch.setattr(_data, "SEARCH_WINDOW", 1)
    # The newest finished job is the cancelled one, the newest unfinished the waiting one.
    assert _ids(client, q="2024") == [seeded.cancelled, seeded.waiting]
    assert _ids(client, q="declined") == []  # the failed job is older than the window
    assert _ids(client, q=str(seeded.succeeded)) == [seeded.succeeded]


def test_the_jobs_page_searches_and_says_how_far(client: TestClient, seeded: Seeded) -> None:
    """The page keeps the text in its box and in its pager, and says what was searched."""
    page = client.get("/jobs", params={"q": "declined"})
    assert page.status_code == 200
    assert f'href="/jobs/{seeded.failed}"' in page.text
    assert f'href="/jobs/{seeded.succeeded}"' not in page.text
    assert 'name="q" value="declined"' in page.text
    assert "10,000 newest unfinished" in page.text
    assert 'data-live-url="/live/jobs?q=declined"' in page.text


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("x" * 201, "q must be at most 200 characters, got 201"),
        ("a\x00b", "control, format and line separator characters are not allowed"),
        ("a\u202eb", "control, format and line separator characters are not allowed"),
    ],
)
def test_a_bad_search_is_refused_with_one_line(
    client: TestClient, seeded: Seeded, value: str, needle: str
) -> None:
    """Too long, or holding a control character: 400 with one line, in JSON and as a page."""
    api = client.get("/api/jobs", params={"q": value})
    assert api.status_code == 400
    assert needle in api.json()["error"]
    assert "\n" not in api.json()["error"]
    page = client.get("/jobs", params={"q": value})
    assert page.status_code == 400
    assert needle in page.text


def test_like_pattern_escapes_every_wildcard() -> None:
    """The pattern built for ILIKE matches the text literally, anywhere."""
    assert _data.like_pattern("50%_off\\") == "%50\\%\\_off\\\\%"
    assert _data.search_id("12") == 12
    assert _data.search_id("#12") == 12
    for not_an_id in ("0", "-1", "1.5", "1e3", "\uff11", "9" * 20, "9223372036854775808", "x"):
        assert _data.search_id(not_an_id) is None, not_an_id
