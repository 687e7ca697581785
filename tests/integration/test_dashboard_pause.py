"""Pausing and resuming from the dashboard: the JSON API, the definitions page's buttons,
the "paused" badges, and the refusal without ``--allow-actions``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from starlette.testclient import TestClient

from orchestra import Config
from orchestra.dashboard import DashboardAuth, create_app
from tests.integration.test_dashboard_api import seed

ClientFactory = Callable[..., TestClient]
ROUTES = [
    f"/api/{kind}/{name}/{verb}"
    for kind, name in (("channels", "mail"), ("definitions", "send-email"))
    for verb in ("pause", "resume")
]


@pytest.fixture
def make_client(config: Config) -> Iterator[ClientFactory]:
    """Open TestClients on dashboards of the seeded test schema; closed at teardown."""
    seed(config)
    opened: list[TestClient] = []

    def make(*, allow_actions: bool = False) -> TestClient:
        client = TestClient(create_app(config, allow_actions=allow_actions, auth=DashboardAuth()))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def test_pausing_is_refused_without_allow_actions(
    make_client: ClientFactory, config: Config
) -> None:
    """Read-only: every pause and resume route answers 403, and no button is shown."""
    client = make_client()
    for route in ROUTES:
        answer = client.post(route, json={})
        assert answer.status_code == 403, route
        assert "--allow-actions" in answer.json()["error"]
        assert client.post(route.removeprefix("/api"), data={"csrf": "x"}).status_code == 403
    page = client.get("/definitions").text
    assert "data-pause" not in page
    assert (config.channels.paused(), config.definitions.paused()) == ([], [])


def test_api_pauses_and_resumes_channels_and_definitions(
    make_client: ClientFactory, config: Config
) -> None:
    """POST /api/{channels,definitions}/{name}/pause|resume: idempotent, reported, shown."""
    client = make_client(allow_actions=True)
    paused = client.post("/api/channels/mail/pause", json={})
    assert paused.status_code == 200
    assert paused.json() == {"kind": "channel", "name": "mail", "paused": True, "changed": True}
    again = client.post("/api/channels/mail/pause", json={}).json()
    assert again["changed"] is False
    assert client.post("/api/channels/empty/pause", json={}).json()["changed"] is True
    definition = client.post("/api/definitions/send-email/pause", json={})
    assert definition.json() == {
        "kind": "definition",
        "name": "send-email",
        "paused": True,
        "changed": True,
    }
    assert [p.channel for p in config.channels.paused()] == ["empty", "mail"]
    assert config.definitions.paused() == ["send-email"]

    overview = client.get("/api/overview").json()
    assert overview["paused_channels"] == ["empty", "mail"]
    definitions = {d["name"]: d for d in client.get("/api/definitions").json()["definitions"]}
    assert definitions["send-email"]["paused"] is True
    assert "tag-paused" in client.get("/").text

    for route in ("/api/channels/mail/resume", "/api/definitions/send-email/resume"):
        assert client.post(route, json={}).json()["changed"] is True
        assert client.post(route, json={}).json()["changed"] is False
    assert [p.channel for p in config.channels.paused()] == ["empty"]
    assert config.definitions.paused() == []


def test_api_refuses_bad_names_and_bodies(make_client: ClientFactory, config: Config) -> None:
    """An unknown definition is 404, a bad channel name 400, a form body 415; nothing written."""
    client = make_client(allow_actions=True)
    unknown = client.post("/api/definitions/nope/pause", json={})
    assert unknown.status_code == 404
    assert "unknown definition 'nope'" in unknown.json()["error"]
    bad = client.post("/api/channels/bad%20name/pause", json={})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("channel: ")
    form = client.post("/api/channels/mail/pause", data={"x": "1"})
    assert form.status_code == 415
    assert (config.channels.paused(), config.definitions.paused()) == ([], [])


def test_definitions_page_buttons_pause_and_resume_with_the_sessions_token(
    make_client: ClientFactory, config: Config
) -> None:
    """The page's forms carry a CSRF token; a forged one is refused, the real one works."""
    client = make_client(allow_actions=True)
    page = client.get("/definitions")
    assert 'action="/channels/mail/pause"' in page.text
    assert 'action="/definitions/send-email/pause"' in page.text
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert match, page.text
    token = match.group(1)
    forged = client.post("/channels/mail/pause", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    assert config.channels.paused() == []
    done = client.post("/channels/mail/pause", data={"csrf": token}, follow_redirects=False)
    assert (done.status_code, done.headers["location"]) == (303, "/definitions")
    client.post("/definitions/send-email/pause", data={"csrf": token})
    after = client.get("/definitions").text
    assert 'action="/channels/mail/resume"' in after
    assert 'action="/definitions/send-email/resume"' in after
    assert (
        after.count("tag-paused") >= 3
    )  # the channel (twice: its row, its definition's) and one definition
    client.post("/definitions/send-email/resume", data={"csrf": token})
    assert config.definitions.paused() == []
