"""Live refresh: ``/live/overview``, ``/live/jobs`` and ``/live/charts``.

Each answers JSON holding the page's live region rendered again by the same
template (what app.js puts in place of the old one), with the same filters,
escaping and authentication as the page; errors are JSON too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from orchestra import Config
from orchestra.dashboard import DashboardAuth, create_app
from tests.integration.test_dashboard_api import Seeded, seed


@pytest.fixture
def seeded(config: Config) -> Seeded:
    """The test's schema with the dashboard tests' jobs."""
    return seed(config)


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    """A dashboard with actions allowed, server errors as 500 responses."""
    app = create_app(config, allow_actions=True, auth=DashboardAuth())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_pages_name_their_live_region_and_carry_a_hidden_control(
    client: TestClient, seeded: Seeded
) -> None:
    """The overview, the jobs list (with its filters) and the charts say what to poll."""
    overview = client.get("/").text
    assert 'id="live-overview" data-live-url="/live/overview" data-live-interval="5000"' in overview
    assert '<div class="live" data-live-control hidden>' in overview
    jobs = client.get("/jobs", params={"status": "failed", "definition": "charge-card"}).text
    assert 'data-live-url="/live/jobs?status=failed&amp;definition=charge-card"' in jobs
    charts = client.get("/charts").text
    assert 'data-live-url="/live/charts?hours=1" data-live-interval="30000"' in charts
    # A job's page does not refresh itself.
    assert "data-live-url" not in client.get(f"/jobs/{seeded.failed}").text


def test_live_overview_renders_the_overview_again(
    client: TestClient, config: Config, seeded: Seeded
) -> None:
    """The region holds the current counts; a change shows at the next poll."""
    first = client.get("/live/overview")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert "script-src 'self'" in first.headers["content-security-policy"]
    body = first.json()
    assert set(body) == {"now", "regions"}
    region = body["regions"]["live-overview"]
    assert "<html" not in region and "<svg" in region
    assert (
        '<span class="stat-label">cancelled</span>\n    <span class="stat-value">1</span>' in region
    )

    config.jobs.cancel(seeded.available)
    again = client.get("/live/overview").json()["regions"]["live-overview"]
    assert (
        '<span class="stat-label">cancelled</span>\n    <span class="stat-value">2</span>' in again
    )


def test_live_jobs_keeps_the_lists_filters_search_and_escaping(
    client: TestClient, seeded: Seeded
) -> None:
    """The same rows as the page would show, checkboxes included; user data escaped."""
    failed = client.get("/live/jobs", params={"status": "failed"}).json()["regions"]["live-jobs"]
    assert f'href="/jobs/{seeded.failed}"' in failed
    assert f'href="/jobs/{seeded.succeeded}"' not in failed
    assert f'name="id" value="{seeded.failed}" form="bulk"' in failed
    assert "&lt;b&gt;" in failed and "<b>" not in failed
    searched = client.get("/live/jobs", params={"q": "2024-06"}).json()["regions"]["live-jobs"]
    assert f'href="/jobs/{seeded.waiting}"' in searched
    assert "1\N{EN DASH}1 of 1 matching job" in searched


def test_live_charts_renders_the_charts_again(client: TestClient, seeded: Seeded) -> None:
    """The charts' region, for the range asked."""
    region = client.get("/live/charts", params={"hours": 24}).json()["regions"]["live-charts"]
    assert 'data-definition="charge-card"' in region
    assert "Jobs finalized per 24 min" in region


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/live/jobs?status=lost", "unknown status 'lost'"),
        ("/live/jobs?limit=0", "limit must be between 1 and 200"),
        ("/live/jobs?definition=%00", "control, format and line separator characters"),
        ("/live/jobs?q=" + "x" * 201, "q must be at most 200 characters"),
        ("/live/charts?hours=5", "hours must be one of 1, 6, 24"),
    ],
)
def test_live_errors_are_json(client: TestClient, seeded: Seeded, path: str, needle: str) -> None:
    """A bad parameter: 400 with a JSON error of one line (app.js shows it beside the control)."""
    response = client.get(path)
    assert response.status_code == 400
    body = response.json()
    assert needle in body["error"] and "\n" not in body["error"]
    assert client.get("/live/nowhere").status_code == 404
    assert client.post("/live/overview").status_code == 405


def test_live_routes_ask_for_credentials(config: Config, seeded: Seeded) -> None:
    """As every page: 401 without the credentials the dashboard asks for."""
    app = create_app(config, auth=DashboardAuth(token="t0ken"))
    with TestClient(app) as client:
        for path in ("/live/overview", "/live/jobs", "/live/charts"):
            assert client.get(path).status_code == 401, path
            ok = client.get(path, headers={"Authorization": "Bearer t0ken"})
            assert ok.status_code == 200, path
