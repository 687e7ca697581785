"""The workflow graph of a job in the dashboard: the JSON API's ``graph`` and the job page's SVG."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from orchestra import Config, JobDefinition, Workflow, chord
from orchestra.dashboard import DashboardAuth, _data, create_app
from orchestra.testing import drain


def square(payload: dict[str, int]) -> int:
    return payload["n"] ** 2


def total(payload: Any, ctx: Any) -> int:
    return sum(ctx.dependency_results().values())


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    """A read-only dashboard of the test's schema, without authentication."""
    with TestClient(create_app(config, auth=DashboardAuth())) as client:
        yield client


@pytest.fixture
def workflow(config: Config) -> Workflow:
    """A chord of three squares, its callback, and a job after it; the members ran."""
    squares = JobDefinition(config, name="square", job_function=square)
    totals = JobDefinition(config, name="total", job_function=total)
    made = chord([squares.job({"n": n}) for n in (1, 2, 3)], then=totals.job({}))
    assert made.callback is not None
    JobDefinition(config, name="report", job_function=square, channel="idle").defer(
        {"n": 0}, depends_on=[made.callback]
    )
    drain(config, definitions=[squares])
    return made


def test_the_api_gives_the_graph_around_a_job(client: TestClient, workflow: Workflow) -> None:
    """/api/jobs/{id} has the nodes upstream and downstream with their status and edges."""
    assert workflow.callback is not None
    members = [job.id for job in workflow.jobs]
    document = client.get(f"/api/jobs/{workflow.callback.id}").json()
    graph = document["graph"]
    assert graph["truncated"] is False
    assert graph["limit"] == _data.GRAPH_LIMIT
    nodes = {node["id"]: node for node in graph["nodes"]}
    assert nodes[workflow.callback.id]["side"] == "self"
    assert nodes[workflow.callback.id]["depends_on"] == members
    assert [nodes[i]["status"] for i in members] == ["succeeded"] * 3
    assert {nodes[i]["depth"] for i in members} == {-1}
    (after,) = [node for node in graph["nodes"] if node["side"] == "downstream"]
    assert (after["definition"], after["status"], after["depth"]) == ("report", "waiting", 1)
    # The direct links stay as they were.
    assert [link["id"] for link in document["dependencies"]] == members


def test_the_openapi_document_describes_the_graph(client: TestClient, workflow: Workflow) -> None:
    """JobDetail lists graph; JobGraph and GraphNode name exactly the fields sent."""
    assert workflow.callback is not None
    schemas = client.get("/api/openapi.json").json()["components"]["schemas"]
    assert "graph" in schemas["JobDetail"]["allOf"][1]["required"]
    graph = client.get(f"/api/jobs/{workflow.callback.id}").json()["graph"]
    assert set(graph) == set(schemas["JobGraph"]["required"])
    assert set(graph["nodes"][0]) == set(schemas["GraphNode"]["required"])


def test_the_job_page_draws_the_workflow(client: TestClient, workflow: Workflow) -> None:
    """An inline SVG: a linked box per job, with its status, an edge per dependency."""
    assert workflow.callback is not None
    page = client.get(f"/jobs/{workflow.callback.id}").text
    assert 'aria-labelledby="workflow"' in page
    svg = page[page.index('<svg class="graph"') : page.index("</svg>", page.index('class="graph"'))]
    for job in workflow.jobs:
        assert f'href="/jobs/{job.id}"' in svg
    assert svg.count('class="node node-succeeded"') == 3
    assert 'class="node node-available node-current"' in svg
    assert svg.count('<path class="edge"') == 4  # three members and the report
    assert "Cut at" not in page


def test_a_job_without_dependencies_draws_no_graph(client: TestClient, config: Config) -> None:
    """Nothing to draw for a job that stands alone."""
    handle = JobDefinition(config, name="alone", job_function=square).defer({"n": 1})
    page = client.get(f"/jobs/{handle.id}").text
    assert '<svg class="graph"' not in page
    assert client.get(f"/api/jobs/{handle.id}").json()["graph"]["nodes"][0]["side"] == "self"


def test_a_large_graph_is_cut_with_a_note(
    client: TestClient, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past GRAPH_LIMIT jobs in a direction, the nearest are drawn and the page says so."""
    monkeypatch.setattr(_data, "GRAPH_LIMIT", 4)
    squares = JobDefinition(config, name="square", job_function=square)
    totals = JobDefinition(config, name="total", job_function=total)
    made = chord([squares.job({"n": n}) for n in range(10)], then=totals.job({}))
    assert made.callback is not None
    page = client.get(f"/jobs/{made.callback.id}").text
    assert re.search(r"Cut at the nearest 4 jobs\s+upstream", page)
    assert page.count('class="node node-available"') == 4
    graph = client.get(f"/api/jobs/{made.callback.id}").json()["graph"]
    assert graph["upstream_truncated"] is True
    assert len(graph["nodes"]) == 5


def test_the_live_refresh_redraws_the_workflow_as_jobs_finish(
    client: TestClient, config: Config
) -> None:
    """/live/jobs/{id} carries the workflow region: a member that succeeded meanwhile shows so."""
    squares = JobDefinition(config, name="square", job_function=square)
    totals = JobDefinition(config, name="total", job_function=total)
    made = chord([squares.job({"n": n}) for n in (1, 2)], then=totals.job({}))
    assert made.callback is not None
    page = client.get(f"/jobs/{made.callback.id}").text
    assert '<div id="live-workflow">' in page
    assert page.count('class="node node-available"') == 2
    drain(config, definitions=[squares])
    region = client.get(f"/live/jobs/{made.callback.id}").json()["regions"]["live-workflow"]
    assert region.count('class="node node-succeeded"') == 2
    assert 'class="node node-available node-current"' in region
