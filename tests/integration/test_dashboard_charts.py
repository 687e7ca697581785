"""The charts: throughput and failures per definition over time, and queue wait.

``/api/charts`` and the ``/charts`` page on the schema
:func:`tests.integration.test_dashboard_api.seed` fills, and the geometry of
the inline SVG charts.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from orchestra import Config
from orchestra.dashboard import DashboardAuth, _data, create_app
from tests.integration.test_dashboard_api import Seeded, seed


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


def test_api_charts_count_finished_jobs_per_definition_and_bucket(
    client: TestClient, seeded: Seeded
) -> None:
    """60 buckets per range; each finished job in the bucket of its end, under its definition."""
    for hours, bucket_s in ((1, 60), (6, 360), (24, 1440)):
        data = client.get("/api/charts", params={"hours": hours}).json()
        assert (data["hours"], data["bucket_seconds"]) == (hours, bucket_s)
        since = dt.datetime.fromisoformat(data["since"])
        now = dt.datetime.fromisoformat(data["now"])
        assert since.timestamp() % bucket_s == 0
        assert (
            dt.timedelta(seconds=59 * bucket_s) <= now - since < dt.timedelta(seconds=60 * bucket_s)
        )
        by_name = {d["definition"]: d for d in data["definitions"]}
        assert set(by_name) == {"send-email", "charge-card", "build-report"}
        assert by_name["send-email"]["totals"] == {"succeeded": 1, "failed": 0, "cancelled": 0}
        assert by_name["charge-card"]["totals"] == {"succeeded": 0, "failed": 1, "cancelled": 0}
        assert by_name["build-report"]["totals"] == {"succeeded": 0, "failed": 0, "cancelled": 1}
        for series in by_name.values():
            assert len(series["succeeded"]) == len(series["failed"]) == 60
            # Finished within the last two buckets (one may have turned meanwhile).
            assert sum(series["failed"][-2:]) == series["totals"]["failed"]


def test_api_charts_queue_wait_and_due_jobs(client: TestClient, seeded: Seeded) -> None:
    """The two jobs that ran have a wait; the available report job is due and waiting."""
    data = client.get("/api/charts").json()
    buckets = data["wait"]["buckets"]
    assert len(buckets) == 60
    assert sum(b["started"] for b in buckets) == 2
    for bucket in buckets:
        if bucket["started"]:
            assert 0 <= bucket["p50_ms"] <= bucket["p95_ms"] <= bucket["max_ms"]
        else:
            assert bucket["p50_ms"] is bucket["p95_ms"] is bucket["max_ms"] is None
    by_name = {w["definition"]: w for w in data["wait"]["by_definition"]}
    assert by_name["send-email"]["started"] == by_name["charge-card"]["started"] == 1
    report = by_name["build-report"]
    assert (report["started"], report["p50_ms"], report["due"]) == (0, None, 1)
    assert report["oldest_due_ms"] >= 0


def test_charts_page_draws_a_chart_per_definition_and_the_queue_wait(
    client: TestClient, seeded: Seeded
) -> None:
    """One figure per definition with jobs, the wait's lines, the ranges; bad hours refused."""
    page = client.get("/charts", params={"hours": 6})
    assert page.status_code == 200
    text = page.text
    for name in ("send-email", "charge-card", "build-report"):
        assert f'data-definition="{name}"' in text
    assert "nightly-cleanup" not in text  # no job finished
    assert text.count('<svg class="chart') == 4
    assert '<g class="line line-p50">' in text and "<circle" in text
    assert '<a href="/charts?hours=6" aria-current="page">6 h</a>' in text
    assert "Jobs finalized per 6 min" in text
    assert 'data-live-url="/live/charts?hours=6"' in text

    for bad in ("2", "x", "1.0", "-1", "\uff11"):
        for path in ("/charts", "/api/charts", "/live/charts"):
            refused = client.get(path, params={"hours": bad})
            assert refused.status_code == 400, (path, bad)
            assert "hours must be one of 1, 6, 24" in html.unescape(refused.text)


def test_a_queue_without_jobs_draws_empty_charts(client: TestClient) -> None:
    """No job: no definition's chart, an empty wait chart, and words saying so."""
    page = client.get("/charts").text
    assert "No job finished in the last 1 h." in page
    assert "No job started in the last 1 h, and none is due." in page
    data = client.get("/api/charts").json()
    assert data["definitions"] == [] and data["wait"]["by_definition"] == []


def test_charts_keep_to_the_busiest_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the most charts drawn, the quietest definitions are counted, not drawn."""
    since = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    monkeypatch.setattr(_data, "CHART_DEFINITIONS_MAX", 2)
    definitions = [
        {
            "definition": name,
            "succeeded": [n] * 60,
            "failed": [1] * 60,
            "cancelled": [0] * 60,
            "totals": {"succeeded": 60 * n, "failed": 60, "cancelled": 0},
        }
        for name, n in (("busy", 3), ("middling", 2), ("quiet", 1))
    ]
    empty = {"start": since, "started": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    drawn = _data.activity_charts(
        {
            "since": since,
            "bucket_seconds": 60,
            "definitions": definitions,
            "wait": {"buckets": [empty] * 60},
        }
    )
    assert [d["name"] for d in drawn["definitions"]] == ["busy", "middling"]
    assert drawn["hidden"] == 1
    assert drawn["definitions"][0]["failure_rate"] == pytest.approx(25.0)


def test_wait_chart_breaks_its_lines_where_no_job_started() -> None:
    """A bucket without a start leaves a gap; points stay in the plot; the top is the peak."""
    start = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)
    buckets = []
    for n in range(60):
        ran = n % 10 < 5
        buckets.append(
            {
                "start": start + dt.timedelta(minutes=n),
                "started": 2 if ran else 0,
                "p50_ms": 100 * n if ran else None,
                "p95_ms": 200 * n if ran else None,
                "max_ms": 300 * n if ran else None,
            }
        )
    drawn = _data.wait_chart(buckets, bucket_s=60)
    p50, p95 = drawn.lines
    assert len(p50.segments) == len(p95.segments) == 6
    assert len(p50.dots) == 30
    assert drawn.peak_label == _data.wait_label(200 * 54)
    for line in drawn.lines:
        for x, y, title in line.dots:
            assert drawn.plot_left <= x <= drawn.plot_right
            assert drawn.plot_top - 0.01 <= y <= drawn.plot_bottom + 0.01
            assert "UTC" in title and "started" in title
    labels = [label for _x, label, _anchor in drawn.ticks]
    assert labels == ["-60 min", "-45 min", "-30 min", "-15 min", "now"]
    assert [anchor for _x, _label, anchor in drawn.ticks][::4] == ["start", "end"]
    nothing = _data.wait_chart(
        [{**b, "p50_ms": None, "p95_ms": None} for b in buckets], bucket_s=60
    )
    assert all(not line.segments for line in nothing.lines)
    assert nothing.peak_label == "0"


def test_wait_labels_and_range_ticks_read_well() -> None:
    """Waits in ms, s, min or h; the ticks of the longer ranges in hours."""
    assert [_data.wait_label(ms) for ms in (None, 0, 850, 12_300, 270_000, 7_560_000)] == [
        "—",
        "0 ms",
        "850 ms",
        "12.3 s",
        "4.5 min",
        "2.1 h",
    ]
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    buckets = [{"start": start, "succeeded": 0, "failed": 0, "cancelled": 0} for _ in range(60)]
    day = _data.bar_chart(buckets, box=_data.SMALL_BOX, bucket_s=1440, time_key="start")
    assert [label for _x, label, _a in day.ticks] == ["-24 h", "-18 h", "-12 h", "-6 h", "now"]
    assert "00:00 to 00:24 UTC" in day.bars[0].title
