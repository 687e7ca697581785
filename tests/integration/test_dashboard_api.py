"""The dashboard app (``orchestra.dashboard``) through Starlette's TestClient, on a real schema.

The JSON API and its OpenAPI document, the HTML pages, authentication,
actions (refused unless allowed; confirmation and CSRF token in the pages),
and the escaping of everything a job carries. :func:`seed` is also used by the
browser tests (``tests/e2e/test_dashboard_browser.py``).
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import re
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from orchestra import Config, JobDefinition
from orchestra.dashboard import DashboardAuth, create_app
from orchestra.dashboard._data import chart
from orchestra.testing import run_until_empty

#: What a hostile producer might put in a payload, an error or a result.
XSS = "<script>window.__xss = 1</script>"


def deliver(payload: dict[str, Any]) -> dict[str, Any]:
    """Succeeds, with a result that echoes the payload."""
    return {"delivered_to": payload["to"], "echo": payload.get("subject")}


def charge(payload: dict[str, Any]) -> None:
    """Always fails, with markup in its error message."""
    raise ValueError(f"card of {payload['to']} declined <b>{XSS}</b>")


def build(payload: dict[str, Any]) -> None:
    """Never runs in these tests (no worker serves its channel)."""


def cleanup() -> None:
    """A cron job; never runs in these tests."""


@attrs.frozen
class Seeded:
    """The ids of the seeded jobs, one per state."""

    succeeded: int
    failed: int
    available: int
    waiting: int
    cancelled: int


def seed(config: Config) -> Seeded:
    """Definitions and jobs in every state but running, on ``config``'s migrated schema.

    * ``send-email`` (channel mail): one succeeded job, with ``<script>`` in its payload and result;
    * ``charge-card`` (channel billing, 2 attempts): one failed job with two tracebacks;
    * ``build-report`` (channel reports, rate limited): an available job, a waiting job that
      depends on it, and a cancelled one;
    * ``nightly-cleanup``: a cron definition (03:00 Europe/Paris) without jobs.
    """
    send = JobDefinition(config, name="send-email", job_function=deliver, channel="mail")
    card = JobDefinition(
        config,
        name="charge-card",
        job_function=charge,
        channel="billing",
        num_attempts=2,
        backoff="none",
    )
    report = JobDefinition(
        config,
        name="build-report",
        job_function=build,
        channel="reports",
        release_interval_ms=200,
        max_concurrency=2,
    )
    nightly = JobDefinition(
        config,
        name="nightly-cleanup",
        job_function=cleanup,
        cron="0 3 * * *",
        cron_timezone="Europe/Paris",
    )
    with config.connection() as conn:
        nightly.upsert(conn)
    succeeded = send.defer({"to": "ada@example.com", "subject": XSS})
    failed = card.defer({"to": "bob@example.com", "amount_cents": 4200})
    run_until_empty(config, channel="mail")
    run_until_empty(config, channel="billing")
    available = report.defer({"month": "2024-05"})
    waiting = report.defer({"month": "2024-06"}, depends_on=[available])
    cancelled = report.defer({"month": "2024-04"})
    config.jobs.cancel(cancelled)
    return Seeded(
        succeeded=succeeded.id,
        failed=failed.id,
        available=available.id,
        waiting=waiting.id,
        cancelled=cancelled.id,
    )


@pytest.fixture
def seeded(config: Config) -> Seeded:
    """The test's schema with :func:`seed`'s jobs."""
    return seed(config)


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(config: Config) -> Iterator[ClientFactory]:
    """Open TestClients on dashboards of the test's Config; closed at teardown."""
    opened: list[TestClient] = []

    def make(*, allow_actions: bool = False, auth: DashboardAuth | None = None) -> TestClient:
        app = create_app(config, allow_actions=allow_actions, auth=auth or DashboardAuth())
        client = TestClient(app)
        client.__enter__()  # runs the lifespan: the app's pool is closed on __exit__
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    """A read-only dashboard without authentication."""
    return make_client()


@pytest.fixture
def actions_client(make_client: ClientFactory) -> TestClient:
    """A dashboard with actions allowed."""
    return make_client(allow_actions=True)


# -- JSON API -------------------------------------------------------------------------


def test_overview_counts_throughput_daemons(client: TestClient, seeded: Seeded) -> None:
    """Counts by status and channel, 60 minute buckets, no daemon, no leader."""
    response = client.get("/api/overview")
    assert response.status_code == 200
    data = response.json()
    assert data["counts"]["total"] == 5
    assert data["counts"]["by_status"] == {
        "waiting": 1,
        "scheduled": 0,
        "available": 1,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert data["counts"]["by_channel"]["reports"] == {
        "waiting": 1,
        "scheduled": 0,
        "available": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 1,
    }
    assert data["counts"]["by_channel"]["mail"]["succeeded"] == 1
    buckets = data["throughput"]["buckets"]
    assert len(buckets) == 60
    assert data["throughput"]["bucket_seconds"] == 60
    minutes = [dt.datetime.fromisoformat(b["minute"]) for b in buckets]
    assert all(b - a == dt.timedelta(minutes=1) for a, b in itertools.pairwise(minutes))
    # Finalized within the last two minutes (a minute may have turned meanwhile).
    recent = buckets[-2:]
    assert sum(b["succeeded"] for b in recent) == 1
    assert sum(b["failed"] for b in recent) == 1
    assert sum(b["cancelled"] for b in recent) == 1
    assert data["workers"] == []  # run_until_empty's workers unregistered when they stopped
    assert data["leader"] is None
    assert data["allow_actions"] is False


def test_jobs_filters_and_pages(client: TestClient, seeded: Seeded) -> None:
    """Status, definition and channel filters; limit, offset and order; total counts."""
    failed = client.get("/api/jobs", params={"status": "failed"}).json()
    assert failed["total"] == 1
    assert [job["id"] for job in failed["jobs"]] == [seeded.failed]
    assert failed["jobs"][0]["attempts"] is None  # lists carry no attempt log

    both = client.get("/api/jobs", params=[("status", "waiting"), ("status", "available")]).json()
    assert {job["id"] for job in both["jobs"]} == {seeded.waiting, seeded.available}

    reports = client.get("/api/jobs", params={"definition": "build-report"}).json()
    assert reports["total"] == 3
    assert [job["id"] for job in reports["jobs"]] == sorted(
        [seeded.available, seeded.waiting, seeded.cancelled], reverse=True
    )
    assert client.get("/api/jobs", params={"channel": "mail"}).json()["total"] == 1

    first = client.get("/api/jobs", params={"limit": 2}).json()
    second = client.get("/api/jobs", params={"limit": 2, "offset": 2}).json()
    oldest = client.get("/api/jobs", params={"limit": 1, "order": "asc"}).json()
    assert first["total"] == second["total"] == 5
    assert (first["limit"], first["offset"], first["order"]) == (2, 0, "desc")
    ids = [job["id"] for job in first["jobs"] + second["jobs"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4
    assert oldest["jobs"][0]["id"] == seeded.succeeded


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"status": "lost"}, "unknown status"),
        ({"limit": "0"}, "limit must be between"),
        ({"limit": "many"}, "limit must be an integer"),
        ({"offset": "-1"}, "offset must be between"),
        ({"order": "sideways"}, "order must be"),
    ],
)
def test_jobs_bad_parameters_are_400(
    client: TestClient, config: Config, params: dict[str, str], needle: str
) -> None:
    """A bad filter is a 400 with a JSON error naming it."""
    response = client.get("/api/jobs", params=params)
    assert response.status_code == 400
    assert needle in response.json()["error"]
    assert response.json()["status"] == 400


def test_job_detail_attempts_and_links(client: TestClient, seeded: Seeded) -> None:
    """One job: its attempts with tracebacks, its dependencies and dependents; 404 if unknown."""
    failed = client.get(f"/api/jobs/{seeded.failed}").json()
    assert failed["status"] == "failed"
    assert [a["outcome"] for a in failed["attempts"]] == ["failed", "failed"]
    assert all("ValueError" in a["traceback"] for a in failed["attempts"])
    assert "declined" in failed["last_error"]

    succeeded = client.get(f"/api/jobs/{seeded.succeeded}").json()
    assert succeeded["result"] == {"delivered_to": "ada@example.com", "echo": XSS}

    waiting = client.get(f"/api/jobs/{seeded.waiting}").json()
    assert waiting["depends_on"] == [seeded.available]
    assert waiting["dependencies"] == [
        {"id": seeded.available, "definition": "build-report", "status": "available"}
    ]
    available = client.get(f"/api/jobs/{seeded.available}").json()
    assert available["dependents"] == [
        {"id": seeded.waiting, "definition": "build-report", "status": "waiting"}
    ]

    missing = client.get("/api/jobs/999999")
    assert missing.status_code == 404
    assert "999999" in missing.json()["error"]


def test_finished_jobs_are_read_from_the_history(
    client: TestClient, seeded: Seeded, config: Config
) -> None:
    """A success's attempt comes from its history row; links name finished jobs with their status."""
    succeeded = client.get(f"/api/jobs/{seeded.succeeded}").json()
    assert [(a["attempt"], a["outcome"]) for a in succeeded["attempts"]] == [(1, "succeeded")]
    assert succeeded["attempts"][0]["finished_at"] == succeeded["finalized_at"]

    config.jobs.cancel(seeded.available)
    config.jobs.cancel(seeded.waiting)
    waiting = client.get(f"/api/jobs/{seeded.waiting}").json()
    assert waiting["dependencies"] == [
        {"id": seeded.available, "definition": "build-report", "status": "cancelled"}
    ]
    available = client.get(f"/api/jobs/{seeded.available}").json()
    assert available["dependents"] == [
        {"id": seeded.waiting, "definition": "build-report", "status": "cancelled"}
    ]


def test_definitions_settings_and_next_tick(client: TestClient, seeded: Seeded) -> None:
    """Settings, counts, and the next cron tick read in the definition's time zone."""
    definitions = {d["name"]: d for d in client.get("/api/definitions").json()["definitions"]}
    assert set(definitions) == {"build-report", "charge-card", "nightly-cleanup", "send-email"}
    report = definitions["build-report"]
    assert (report["release_interval_ms"], report["max_concurrency"]) == (200, 2)
    assert report["counts"]["waiting"] == report["counts"]["available"] == 1
    assert report["expected_next_tick_at"] is None
    nightly = definitions["nightly-cleanup"]
    assert nightly["cron"] == "0 3 * * *"
    assert nightly["expected_next_tick_computed"] is True  # no orchestrator stored one
    tick = dt.datetime.fromisoformat(nightly["expected_next_tick_at"])
    paris = tick.astimezone(zoneinfo.ZoneInfo("Europe/Paris"))
    assert (paris.hour, paris.minute) == (3, 0)
    assert dt.timedelta(0) < tick - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=24)


# -- actions --------------------------------------------------------------------------


def test_actions_refused_when_not_allowed(client: TestClient, seeded: Seeded) -> None:
    """Read-only: no buttons, and every action route answers 403 (API and pages)."""
    for action in ("retry", "cancel", "delete"):
        api = client.post(f"/api/jobs/{seeded.failed}/{action}", json={})
        assert api.status_code == 403, action
        assert "--allow-actions" in api.json()["error"]
        assert client.get(f"/jobs/{seeded.failed}/{action}").status_code == 403
        form = client.post(f"/jobs/{seeded.failed}/{action}", data={"confirm": "yes"})
        assert form.status_code == 403
    page = client.get(f"/jobs/{seeded.failed}").text
    assert f"/jobs/{seeded.failed}/retry" not in page
    assert "read-only" in page
    assert client.get(f"/api/jobs/{seeded.failed}").json()["status"] == "failed"


def test_api_actions(actions_client: TestClient, seeded: Seeded) -> None:
    """Retry, cancel and delete through the API; wrong states are 409, non-JSON bodies 415."""
    client = actions_client
    retried = client.post(f"/api/jobs/{seeded.failed}/retry", json={})
    assert retried.status_code == 200
    assert retried.json()["job"]["status"] == "available"
    assert retried.json()["job"]["attempt"] == 2  # attempt numbers go on after a retry

    refused = client.post(f"/api/jobs/{seeded.waiting}/retry", json={})
    assert refused.status_code == 409
    assert "waiting" in refused.json()["error"]

    form = client.post(f"/api/jobs/{seeded.available}/cancel", data={"x": "1"})
    assert form.status_code == 415
    cancelled = client.post(f"/api/jobs/{seeded.available}/cancel", json={})
    assert cancelled.json()["job"]["status"] == "cancelled"

    deleted = client.post(f"/api/jobs/{seeded.cancelled}/delete", json={})
    assert deleted.json() == {"deleted": seeded.cancelled}
    assert client.get(f"/api/jobs/{seeded.cancelled}").status_code == 404
    assert client.post("/api/jobs/999999/retry", json={}).status_code == 404
    wrong_method = client.get(f"/api/jobs/{seeded.failed}/retry")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, html
    return match.group(1)


def test_page_action_needs_confirmation_and_token(
    actions_client: TestClient, seeded: Seeded
) -> None:
    """Confirm page, then a POST with the box ticked and the session's token; else refused."""
    client = actions_client
    job_page = client.get(f"/jobs/{seeded.failed}").text
    assert f'href="/jobs/{seeded.failed}/retry"' in job_page

    confirm = client.get(f"/jobs/{seeded.failed}/retry")
    assert confirm.status_code == 200
    assert "orchestra_session" in confirm.headers["set-cookie"]
    assert "httponly" in confirm.headers["set-cookie"].lower()
    assert "samesite=strict" in confirm.headers["set-cookie"].lower()
    token = _csrf(confirm.text)

    unticked = client.post(f"/jobs/{seeded.failed}/retry", data={"csrf": token})
    assert unticked.status_code == 400
    assert "Tick the box" in unticked.text
    forged = client.post(f"/jobs/{seeded.failed}/retry", data={"csrf": "0" * 64, "confirm": "yes"})
    assert forged.status_code == 403
    assert client.get(f"/api/jobs/{seeded.failed}").json()["status"] == "failed"

    # Another browser (no session cookie) cannot replay this browser's token.
    with TestClient(client.app) as stranger:
        replay = stranger.post(
            f"/jobs/{seeded.failed}/retry", data={"csrf": token, "confirm": "yes"}
        )
        assert replay.status_code == 403

    done = client.post(
        f"/jobs/{seeded.failed}/retry",
        data={"csrf": token, "confirm": "yes"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/jobs/{seeded.failed}?done=retry"
    after = client.get(done.headers["location"]).text
    assert "was retried; it is now available" in after

    blocked = client.get(f"/jobs/{seeded.waiting}/retry")
    assert blocked.status_code == 409
    assert "A waiting job cannot be retried." in blocked.text
    assert 'name="csrf"' not in blocked.text

    refused = client.post(f"/jobs/{seeded.waiting}/retry", data={"csrf": token, "confirm": "yes"})
    assert refused.status_code == 409
    assert "waiting for its dependencies" in refused.text

    gone = client.post(
        f"/jobs/{seeded.cancelled}/delete",
        data={"csrf": token, "confirm": "yes"},
        follow_redirects=False,
    )
    assert gone.headers["location"] == f"/jobs?deleted={seeded.cancelled}"
    assert f"Job {seeded.cancelled} was deleted." in client.get(gone.headers["location"]).text


# -- authentication ---------------------------------------------------------------------


def test_basic_auth(make_client: ClientFactory, seeded: Seeded) -> None:
    """401 with a challenge without (or with wrong) credentials; 200 with them, static too."""
    client = make_client(auth=DashboardAuth(user="ops", password="s3cret"))
    for path in ("/", "/api/overview", "/static/style.css", "/api/openapi.json"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Basic")
    assert client.get("/api/overview").json()["error"] == "authentication required"
    assert client.get("/", auth=("ops", "wrong")).status_code == 401
    assert client.get("/", auth=("someone", "s3cret")).status_code == 401
    bogus = {"Authorization": "Basic !!!not-base64"}
    assert client.get("/", headers=bogus).status_code == 401
    assert client.get("/", auth=("ops", "s3cret")).status_code == 200
    assert client.get("/api/overview", auth=("ops", "s3cret")).status_code == 200
    assert client.get("/static/style.css", auth=("ops", "s3cret")).status_code == 200


def test_bearer_token(make_client: ClientFactory, seeded: Seeded) -> None:
    """A bearer token is accepted alone, or beside basic auth."""
    client = make_client(auth=DashboardAuth(token="t0ken-xyz", user="ops", password="pw"))
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/api/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.get("/api/jobs", headers={"Authorization": "Bearer t0ken-xyz"})
    assert ok.status_code == 200
    credentials = base64.b64encode(b"ops:pw").decode()
    assert client.get("/api/jobs", headers={"Authorization": f"Basic {credentials}"}).is_success


def test_auth_from_environment() -> None:
    """The variables are read, a half-set basic auth is an error, and reprs hide secrets."""
    auth = DashboardAuth.from_env(
        {
            "ORCHESTRA_DASHBOARD_USER": "ops",
            "ORCHESTRA_DASHBOARD_PASSWORD": "hunter2",
            "ORCHESTRA_DASHBOARD_TOKEN": "tok-123",
        }
    )
    assert (auth.user, auth.password, auth.token) == ("ops", "hunter2", "tok-123")
    assert "hunter2" not in repr(auth) and "tok-123" not in repr(auth)
    assert not DashboardAuth.from_env({}).enabled
    assert not DashboardAuth.from_env({"ORCHESTRA_DASHBOARD_TOKEN": ""}).enabled
    with pytest.raises(ValueError, match="both"):
        DashboardAuth.from_env({"ORCHESTRA_DASHBOARD_USER": "ops"})


def test_auth_defaults_to_the_environment(
    config: Config, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create_app without auth= asks for the credentials the environment names."""
    monkeypatch.setenv("ORCHESTRA_DASHBOARD_TOKEN", "from-env")
    with TestClient(create_app(config)) as client:
        assert client.get("/api/overview").status_code == 401
        headers = {"Authorization": "Bearer from-env"}
        assert client.get("/api/overview", headers=headers).status_code == 200


# -- pages and escaping --------------------------------------------------------------------


def test_pages_render(client: TestClient, seeded: Seeded) -> None:
    """Every page answers 200 with what it is about; unknown jobs and routes are 404 pages."""
    overview = client.get("/")
    assert overview.status_code == 200
    assert overview.headers["content-type"].startswith("text/html")
    assert "<svg" in overview.text and "Last hour" in overview.text
    assert "No orchestrator has led this schema yet" in overview.text

    jobs = client.get("/jobs", params={"status": "failed"}).text
    assert "1\N{EN DASH}1 of 1 matching job" in jobs
    assert f'href="/jobs/{seeded.failed}"' in jobs

    job = client.get(f"/jobs/{seeded.failed}").text
    assert "Traceback of attempt 2" in job
    assert "ValueError" in job
    waiting = client.get(f"/jobs/{seeded.waiting}").text
    assert f'href="/jobs/{seeded.available}"' in waiting

    definitions = client.get("/definitions").text
    for name in ("build-report", "charge-card", "nightly-cleanup", "send-email"):
        assert name in definitions
    assert "1 start / 200 ms" in definitions
    assert "cron <code>0 3 * * *</code>" in definitions

    missing = client.get("/jobs/999999")
    assert missing.status_code == 404
    assert "text/html" in missing.headers["content-type"]
    assert client.get("/nowhere").status_code == 404
    assert client.get("/jobs", params={"status": "lost"}).status_code == 400
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/favicon.svg").status_code == 200


def test_user_data_is_escaped(client: TestClient, seeded: Seeded) -> None:
    """Payloads, results and errors with markup are shown as text, never as markup."""
    pages = [
        client.get(f"/jobs/{seeded.succeeded}"),
        client.get(f"/jobs/{seeded.failed}"),
        client.get("/jobs"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert "<script>window" not in page.text
        assert "<b>" not in page.text
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in pages[0].text
    assert "&lt;b&gt;" in pages[1].text
    csp = pages[0].headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert pages[0].headers["x-content-type-options"] == "nosniff"


# -- the OpenAPI document ------------------------------------------------------------------


def test_openapi_lists_every_api_route(client: TestClient, seeded: Seeded) -> None:
    """Every /api route (with its methods) is in the document, and nothing else is."""
    document = client.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    routes = {
        (re.sub(r":\w+}", "}", route.path), method.lower())  # {job_id:<convertor>} -> {job_id}
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.path.startswith("/api")
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    assert documented == routes
    operation_ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    schemas = document["components"]["schemas"]
    for ref in re.findall(
        r'"\$ref": "#/components/schemas/(\w+)"', str(document).replace("'", '"')
    ):
        assert ref in schemas


def test_openapi_schemas_match_responses(client: TestClient, seeded: Seeded) -> None:
    """The documented required fields are exactly the fields the API sends."""
    schemas = client.get("/api/openapi.json").json()["components"]["schemas"]

    def required(name: str) -> set[str]:
        return set(schemas[name]["required"])

    overview = client.get("/api/overview").json()
    assert set(overview) == required("Overview")
    page = client.get("/api/jobs").json()
    assert set(page) == required("JobPage")
    assert set(page["jobs"][0]) == required("Job")
    job = client.get(f"/api/jobs/{seeded.failed}").json()
    detail = schemas["JobDetail"]["allOf"][1]["required"]
    assert set(job) == required("Job") | set(detail)
    assert set(job["attempts"][0]) == required("Attempt")
    definitions = client.get("/api/definitions").json()["definitions"]
    assert set(definitions[0]) == required("Definition")


def test_chart_geometry() -> None:
    """Bars stack within the plot; an empty hour draws no bar and a zero peak."""
    start = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)
    buckets = [
        {
            "minute": start + dt.timedelta(minutes=i),
            "succeeded": i % 3,
            "failed": i % 2,
            "cancelled": 0,
        }
        for i in range(60)
    ]
    drawn = chart(buckets)
    assert drawn.peak == 3
    assert len(drawn.bars) == 60
    for bar in drawn.bars:
        for _css, y, height in bar.parts:
            assert drawn.plot_top - 0.01 <= y and y + height <= drawn.plot_bottom + 0.01
    assert drawn.total == {"succeeded": 60, "failed": 30, "cancelled": 0}
    empty = chart([{**b, "succeeded": 0, "failed": 0} for b in buckets])
    assert empty.peak == 0 and all(not bar.parts for bar in empty.bars)
