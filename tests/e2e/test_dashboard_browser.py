"""The dashboard in a real browser: ``orchestra dashboard`` as a process, driven by Chromium.

Debian's ``/usr/bin/chromium`` through Playwright's sync API (Playwright's own
browser downloads are not used). The schema holds jobs in every state
(:func:`tests.integration.test_dashboard_api.seed`), and an ``orchestra
daemon --role all`` registers a live worker and the orchestrator leader. Each
page is saved as a full-page screenshot under ``tests/artifacts/dashboard/``.

The module skips, with the reason, when Chromium or Playwright is missing
(``.ci/run`` installs Chromium when it can).
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestra import Config
from orchestra.testing import wait_until
from tests.e2e._support import REPO, Daemon, DaemonFactory, Queue, orchestra_argv
from tests.integration.test_dashboard_api import XSS, Seeded, seed

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover (a dev install has it)
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts" / "dashboard"
START_TIMEOUT_S = 30.0

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"Debian's Chromium is not installed at {CHROMIUM} "
        "(apt-get install chromium; .ci/run installs it when it runs as root or with sudo)",
    ),
    pytest.mark.skipif(
        not HAVE_PLAYWRIGHT,
        reason="playwright is not importable (pip install -e '.[dev]')",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module's tests."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context and page (own cookies), 1280 pixels wide."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


StartDashboard = Callable[..., str]


@pytest.fixture
def start_dashboard(
    daemons: DaemonFactory, e2e_env: dict[str, str], test_dsn: str, schema: str, tmp_path: Path
) -> StartDashboard:
    """Start ``orchestra dashboard`` on the test's schema; return its base URL once it listens.

    The process joins the test's daemons: killed at teardown, its log attached
    to the report of a failed test.
    """

    def start(*, allow_actions: bool) -> str:
        port = _free_port()
        argv = orchestra_argv(
            "dashboard", "--dsn", test_dsn, "--schema", schema, "--port", str(port),
            *(["--allow-actions"] if allow_actions else []),
        )  # fmt: skip
        log_path = tmp_path / f"dashboard-{port}.log"
        log_file = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=e2e_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log_file.close()
            raise
        process = Daemon(proc, log_path, log_file)
        daemons.daemons.append(process)

        def listening() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the dashboard exited with {proc.returncode}:\n{process.log()}")
            return _accepts(port)

        wait_until(
            listening, timeout=START_TIMEOUT_S, message=f"the dashboard never listened on {port}"
        )
        return f"http://127.0.0.1:{port}"

    return start


def shot(page: Page, name: str) -> None:
    """Save a full-page screenshot as tests/artifacts/dashboard/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_click_through_and_retry(
    page: Page,
    config: Config,
    queue: Queue,
    daemons: DaemonFactory,
    start_dashboard: StartDashboard,
) -> None:
    """Overview, jobs filtered to failed, the job and its traceback, definitions, a retry."""
    seeded: Seeded = seed(config)
    daemon = daemons.start(role="all", name="dash-e2e")  # a live worker and the leader
    daemon.wait_for_log("OrchestratorLeadershipAcquired")
    base = start_dashboard(allow_actions=True)

    # Overview: counts, chart, the live daemon and the leader.
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    expect(page.locator(".stat-failed .stat-value")).to_have_text("1")
    expect(page.locator(".stat-waiting .stat-value")).to_have_text("1")
    expect(page.locator("svg.chart")).to_be_visible()
    daemons_table = page.get_by_role("region", name=re.compile("^Daemons"))
    expect(daemons_table.get_by_text("dash-e2e").first).to_be_visible()
    expect(daemons_table.locator(".tag-leader")).to_have_count(1)
    expect(page.get_by_role("region", name="Orchestrator leader")).to_contain_text("holder")
    expect(page.locator(".mode-actions")).to_have_text("actions enabled")
    shot(page, "overview")

    # Jobs, then only the failed ones.
    page.get_by_role("navigation", name="main").get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    expect(page.locator("#job-count")).to_contain_text("of 5 matching jobs")
    shot(page, "jobs")
    page.get_by_label("status").select_option("failed")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(page.locator("#job-count")).to_contain_text("1\N{EN DASH}1 of 1 matching job")
    expect(page.locator("table.jobs tbody tr")).to_have_count(1)
    shot(page, "jobs-failed")

    # The failed job: its attempts and the traceback of the last one.
    page.get_by_role("link", name=str(seeded.failed), exact=True).click()
    expect(page.get_by_role("heading", name=f"Job {seeded.failed} failed")).to_be_visible()
    expect(page.locator("table.data").last).to_contain_text("card of bob@example.com declined")
    traceback = page.locator("details.traceback[open] pre")
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("ValueError")
    shot(page, "job")

    # Definitions: settings, the next cron tick, the rate limit.
    page.get_by_role("navigation", name="main").get_by_role("link", name="Definitions").click()
    rows = page.locator("table.definitions tbody tr")
    expect(rows.filter(has_text="nightly-cleanup")).to_contain_text("cron 0 3 * * *")
    expect(rows.filter(has_text="nightly-cleanup")).to_contain_text("computed")
    expect(rows.filter(has_text="build-report")).to_contain_text("1 start / 200 ms")
    expect(rows.filter(has_text="build-report")).to_contain_text("≤ 2 running")
    shot(page, "definitions")

    # Retry the failed job, through the confirmation.
    page.goto(f"{base}/jobs/{seeded.failed}")
    page.get_by_role("link", name="Retry").click()
    expect(page.get_by_role("heading", name=f"Retry job {seeded.failed}?")).to_be_visible()
    submit = page.get_by_role("button", name=f"Retry job {seeded.failed}")
    expect(submit).to_be_disabled()  # until the box is ticked
    page.get_by_label(f"Yes, retry job {seeded.failed}").check()
    expect(submit).to_be_enabled()
    shot(page, "confirm")
    submit.click()
    expect(page.get_by_role("status")).to_contain_text("was retried; it is now available")
    expect(page.get_by_role("heading", name=f"Job {seeded.failed} available")).to_be_visible()
    shot(page, "job-retried")
    assert queue.job(seeded.failed)["status"] == "available"

    # A payload and result with <script> are shown as text, and never run.
    page.goto(f"{base}/jobs/{seeded.succeeded}")
    expect(page.get_by_role("region", name="Payload")).to_contain_text(XSS)
    expect(page.get_by_role("region", name="Result")).to_contain_text(XSS)
    assert page.evaluate("typeof window.__xss") == "undefined"
    page.goto(f"{base}/jobs/{seeded.waiting}")
    expect(page.get_by_role("link", name=f"job {seeded.available}")).to_be_visible()
    shot(page, "job-waiting")


def test_read_only_without_allow_actions(
    page: Page, config: Config, start_dashboard: StartDashboard
) -> None:
    """Without --allow-actions: no action buttons, and POSTs are refused with 403."""
    seeded = seed(config)
    base = start_dashboard(allow_actions=False)
    page.goto(f"{base}/jobs/{seeded.failed}")
    expect(page.get_by_role("heading", name=f"Job {seeded.failed} failed")).to_be_visible()
    expect(page.locator(".mode")).to_have_text("read-only")
    for action in ("Retry", "Cancel", "Delete"):
        expect(page.get_by_role("link", name=action, exact=True)).to_have_count(0)
    shot(page, "job-read-only")

    form = page.request.post(f"{base}/jobs/{seeded.failed}/retry", form={"confirm": "yes"})
    assert form.status == 403
    api = page.request.post(f"{base}/api/jobs/{seeded.failed}/retry", data={})
    assert api.status == 403
    assert "--allow-actions" in api.json()["error"]
    confirm = page.goto(f"{base}/jobs/{seeded.failed}/retry")
    assert confirm is not None and confirm.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    shot(page, "refused")
    assert config.jobs.get(seeded.failed, with_attempts=False).status == "failed"
