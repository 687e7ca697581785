"""The dashboard and its JSON API show tags, metadata and progress, and filter by tag.

The jobs list (page, live region, API) takes ``tag=``; a job's page shows its
tags (each a link to the filter), its metadata, and, while it is unfinished, a
live region with its status, attempt and progress that ``/live/jobs/{id}``
renders again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from orchestra import Config, JobDefinition
from orchestra.dashboard import DashboardAuth, create_app
from tests._finished_jobs import finish_by_sql


def _noop(payload: Any = None) -> None:
    """Never run: the dashboard only reads."""


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    """A read-only dashboard; server errors as 500 responses."""
    app = create_app(config, auth=DashboardAuth())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def jobs(config: Config, db: psycopg.Connection[Any]) -> dict[str, int]:
    """A running job with tags, meta and progress; a finished tagged one; an untagged one."""
    mail = JobDefinition(config, name="send-mail", job_function=_noop)
    running = mail.defer(
        {"to": "ada"}, tags=["billing", "<b>eu</b>"], meta={"tenant": 42, "note": "<i>x</i>"}
    )
    done = mail.defer({"to": "bob"}, tags=["billing"])
    plain = mail.defer({"to": "cy"})
    db.execute(
        f"UPDATE \"{config.schema}\".job SET status = 'running', attempt = 1, "
        "lock_token = gen_random_uuid(), started_at = now(), "
        """progress = '{"done": 3, "total": 10}' WHERE id = %s""",
        [running.id],
    )
    finish_by_sql(db, config, done.id, "succeeded")
    return {"running": running.id, "done": done.id, "plain": plain.id}


def test_the_api_lists_by_tag_with_tags_meta_and_progress(
    client: TestClient, jobs: dict[str, int]
) -> None:
    """/api/jobs?tag= keeps the tagged jobs, finished ones included; each carries all three."""
    page = client.get("/api/jobs", params={"tag": "billing"}).json()
    assert page["total"] == 2
    listed = {job["id"]: job for job in page["jobs"]}
    assert set(listed) == {jobs["running"], jobs["done"]}
    running = listed[jobs["running"]]
    assert running["tags"] == ["billing", "<b>eu</b>"]
    assert running["meta"] == {"tenant": 42, "note": "<i>x</i>"}
    assert running["progress"] == {"done": 3, "total": 10}
    assert listed[jobs["done"]]["meta"] == {}
    detail = client.get(f"/api/jobs/{jobs['running']}").json()
    assert (detail["tags"], detail["progress"]) == (running["tags"], running["progress"])
    assert client.get("/api/jobs", params={"tag": "nobody"}).json()["total"] == 0
    # The search takes the filter too.
    searched = client.get("/api/jobs", params={"tag": "billing", "q": "bob"}).json()
    assert [job["id"] for job in searched["jobs"]] == [jobs["done"]]


@pytest.mark.parametrize("tag", ["x" * 101, "a\u202eb"])
def test_a_bad_tag_filter_is_a_400(client: TestClient, jobs: dict[str, int], tag: str) -> None:
    """Checked as a tag is, before any query."""
    response = client.get("/api/jobs", params={"tag": tag})
    assert response.status_code == 400
    assert "tag" in response.json()["error"]


def test_the_jobs_page_filters_by_tag_and_links_each_tag(
    client: TestClient, jobs: dict[str, int]
) -> None:
    """The filter form keeps the tag; tags are escaped links to the filter; the live URL too."""
    page = client.get("/jobs", params={"tag": "billing"}).text
    assert 'name="tag" value="billing"' in page
    assert f'href="/jobs/{jobs["running"]}"' in page
    assert f'href="/jobs/{jobs["plain"]}"' not in page
    assert 'href="/jobs?tag=%3Cb%3Eeu%3C%2Fb%3E"' in page
    assert "&lt;b&gt;eu&lt;/b&gt;" in page and "<b>eu</b>" not in page
    assert 'data-live-url="/live/jobs?tag=billing"' in page
    # A running job's progress is drawn as a small bar in the list.
    assert '<progress class="progress-small" max="1" value="0.3"' in page
    live = client.get("/live/jobs", params={"tag": "billing"}).json()["regions"]["live-jobs"]
    assert f'href="/jobs/{jobs["running"]}"' in live
    assert f'href="/jobs/{jobs["plain"]}"' not in live


def test_an_unfinished_jobs_page_follows_its_progress_live(
    client: TestClient, config: Config, db: psycopg.Connection[Any], jobs: dict[str, int]
) -> None:
    """Its page polls /live/jobs/{id}, which renders the status and progress bar again."""
    job_id = jobs["running"]
    page = client.get(f"/jobs/{job_id}").text
    assert f'id="live-job" data-live-url="/live/jobs/{job_id}" data-live-interval="2000"' in page
    assert '<progress max="1" value="0.3">' in page and "3 of 10 (30%)" in page
    assert "&lt;i&gt;x&lt;/i&gt;" in page and "<i>x</i>" not in page  # meta, escaped
    assert 'href="/jobs?tag=billing"' in page

    db.execute(f"UPDATE \"{config.schema}\".job SET progress = '0.8' WHERE id = %s", [job_id])
    body = client.get(f"/live/jobs/{job_id}").json()
    region = body["regions"]["live-job"]
    assert '<progress max="1" value="0.8">' in region and "80%" in region
    assert "status-running" in region and "<html" not in region


def test_a_finished_jobs_page_does_not_poll_and_keeps_its_progress(
    client: TestClient, config: Config, db: psycopg.Connection[Any], jobs: dict[str, int]
) -> None:
    """A finished job's page shows its last progress without a live region."""
    db.execute(
        f"UPDATE \"{config.schema}\".job_history SET progress = '1.0' WHERE id = %s",
        [jobs["done"]],
    )
    page = client.get(f"/jobs/{jobs['done']}").text
    assert "data-live-url" not in page
    assert '<progress max="1" value="1.0">' in page and "100%" in page
    plain = client.get(f"/jobs/{jobs['plain']}").text
    assert "none reported" in plain  # unfinished, live, nothing reported yet
    assert client.get("/live/jobs/999999").status_code == 404
