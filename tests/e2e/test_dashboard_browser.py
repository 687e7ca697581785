"""The dashboard in a real browser: ``orchestra dashboard`` as a process, driven by Chromium.

Debian's ``/usr/bin/chromium`` through Playwright's sync API (Playwright's own
browser downloads are not used). The schema holds jobs in every state
(:func:`tests.integration.test_dashboard_api.seed`), and an ``orchestra
daemon --role all`` registers a live worker and the orchestrator leader. Each
page is saved as a full-page screenshot under ``tests/artifacts/dashboard/``
(or the directory ``ORCHESTRA_DASHBOARD_SCREENSHOTS`` names): the desktop
width, a phone's (420 pixels), and the dark theme a system setting asks for.

The live refresh is driven by Playwright's fake clock: the test moves time
on to the next poll instead of waiting for it.

The module skips, with the reason, when Chromium or Playwright is missing
(``.ci/run`` installs Chromium when it can).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from orchestra import Config, JobDefinition, chord
from orchestra.testing import run_until_empty, wait_until
from tests.e2e._support import REPO, Daemon, DaemonFactory, Queue, orchestra_argv
from tests.integration.test_dashboard_api import XSS, Seeded, charge, seed

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover (a dev install has it)
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(
    os.environ.get("ORCHESTRA_DASHBOARD_SCREENSHOTS") or REPO / "tests" / "artifacts" / "dashboard"
)
START_TIMEOUT_S = 30.0
#: A phone's width, in CSS pixels.
PHONE_WIDTH = 420
#: The overview's and the jobs list's poll interval (ms), as the pages say.
LIVE_INTERVAL_MS = 5000

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


Scheme = Literal["light", "dark"]
OpenPage = Callable[..., Page]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """Open pages in fresh contexts of a given width and color scheme; closed at teardown."""
    contexts = []

    def open_(*, width: int = 1280, scheme: Scheme = "light") -> Page:
        context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield open_
    for context in contexts:
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


# -- live refresh, search, bulk actions, charts, dark mode and phones -----------------------


def _fail_more(config: Config, count: int) -> list[int]:
    """``count`` more failed jobs of charge-card."""
    card = JobDefinition(
        config,
        name="charge-card",
        job_function=charge,
        channel="billing",
        num_attempts=2,
        backoff="none",
    )
    ids = [card.defer({"to": f"user{n}@example.com", "amount_cents": n}).id for n in range(count)]
    run_until_empty(config, channel="billing")
    return ids


def test_overview_refreshes_live_until_paused(
    page: Page, config: Config, start_dashboard: StartDashboard
) -> None:
    """Counts change without a reload; Pause stops the polling, on this page and the next."""
    seeded = seed(config)
    base = start_dashboard(allow_actions=False)
    polls: list[str] = []
    page.on(
        "request", lambda request: polls.append(request.url) if "/live/" in request.url else None
    )
    page.clock.install()
    page.goto(base + "/")
    control = page.locator("[data-live-control]")
    expect(control).to_be_visible()
    expect(control).to_contain_text("live")
    expect(page.locator(".stat-cancelled .stat-value")).to_have_text("1")
    page.evaluate("window.notReloaded = true")

    config.jobs.cancel(seeded.available)
    page.clock.run_for(LIVE_INTERVAL_MS)
    expect(page.locator(".stat-cancelled .stat-value")).to_have_text("2")
    expect(page.locator(".stat-available .stat-value")).to_have_text("0")
    expect(control).to_contain_text("updated")
    assert page.evaluate("window.notReloaded") is True
    assert polls and all("/live/overview" in url for url in polls)
    shot(page, "live-overview")

    page.get_by_role("button", name="Pause").click()
    expect(control).to_contain_text("paused")
    expect(page.get_by_role("button", name="Resume")).to_have_attribute("aria-pressed", "true")
    polled = len(polls)
    config.jobs.cancel(seeded.waiting)
    page.clock.run_for(12 * LIVE_INTERVAL_MS)
    page.evaluate("0")  # a round trip: request events sent before it have arrived
    assert len(polls) == polled
    expect(page.locator(".stat-cancelled .stat-value")).to_have_text("2")
    shot(page, "live-overview-paused")

    # The browser remembers the pause on the next page, until Resume polls at once.
    page.get_by_role("navigation", name="main").get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    expect(control).to_contain_text("paused")
    page.clock.run_for(12 * LIVE_INTERVAL_MS)
    page.evaluate("0")
    assert len(polls) == polled
    page.get_by_role("button", name="Resume").click()
    expect(control).to_contain_text("updated")
    assert any("/live/jobs" in url for url in polls[polled:])


def test_jobs_list_refreshes_live_and_keeps_the_selection(
    page: Page, config: Config, start_dashboard: StartDashboard
) -> None:
    """A job deleted elsewhere leaves the list at the next poll; ticked jobs stay ticked."""
    seeded = seed(config)
    base = start_dashboard(allow_actions=True)
    page.clock.install()
    page.goto(base + "/jobs")
    rows = page.locator("table.jobs tbody tr")
    expect(rows).to_have_count(5)
    page.get_by_label(f"select job {seeded.failed}", exact=True).check()
    expect(page.get_by_role("button", name="Retry selected (1)")).to_be_enabled()

    config.jobs.delete(seeded.cancelled)
    page.clock.run_for(LIVE_INTERVAL_MS)
    expect(rows).to_have_count(4)
    expect(page.locator("#job-count")).to_contain_text("of 4 matching jobs")
    expect(page.get_by_label(f"select job {seeded.failed}", exact=True)).to_be_checked()
    expect(page.get_by_role("button", name="Retry selected (1)")).to_be_enabled()
    shot(page, "live-jobs")


def test_search_by_id_payload_and_error_text(
    page: Page, config: Config, start_dashboard: StartDashboard
) -> None:
    """The search box finds a job by its id, its payload's text and its error's text."""
    seeded = seed(config)
    base = start_dashboard(allow_actions=False)
    page.goto(base + "/jobs")
    rows = page.locator("table.jobs tbody tr")
    search = page.get_by_role("searchbox", name="search")

    search.fill("declined")
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"q=declined"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("charge-card")
    expect(page.locator("#search-scope")).to_contain_text("10,000 newest unfinished")
    shot(page, "search-error-text")

    page.get_by_role("searchbox", name="search").fill("BOB@EXAMPLE")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first.get_by_role("link")).to_have_text(str(seeded.failed))

    page.get_by_role("searchbox", name="search").fill("2024-06")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first.get_by_role("link")).to_have_text(str(seeded.waiting))

    page.get_by_role("searchbox", name="search").fill(f"#{seeded.succeeded}")
    page.get_by_role("button", name="Apply").click()
    expect(rows.first.get_by_role("link")).to_have_text(str(seeded.succeeded))
    shot(page, "search-id")

    page.get_by_role("searchbox", name="search").fill("100%")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#job-count")).to_have_text("No jobs match.")
    page.get_by_role("link", name="clear filters").click()
    expect(rows).to_have_count(5)


def test_bulk_actions_and_retry_all_failed_of_a_definition(
    page: Page, config: Config, start_dashboard: StartDashboard
) -> None:
    """Tick jobs, confirm, see each outcome; retry every failed job of a definition."""
    seeded = seed(config)
    first, second = _fail_more(config, 2)
    base = start_dashboard(allow_actions=True)
    page.goto(base + "/jobs?status=failed")
    retry = page.get_by_role("button", name=re.compile("^Retry selected"))
    expect(retry).to_be_disabled()
    page.get_by_label(f"select job {first}", exact=True).check()
    page.get_by_label(f"select job {second}", exact=True).check()
    expect(retry).to_have_text("Retry selected (2)")
    shot(page, "bulk-selected")
    retry.click()

    expect(page.get_by_role("heading", name="Retry the 2 selected jobs?")).to_be_visible()
    submit = page.get_by_role("button", name="Retry 2 jobs")
    expect(submit).to_be_disabled()
    page.get_by_label("Yes, retry 2 jobs").check()
    shot(page, "bulk-confirm")
    submit.click()
    expect(page.locator("#bulk-summary")).to_have_text("2 jobs retried.")
    shot(page, "bulk-done")
    assert {config.jobs.get(i, with_attempts=False).status for i in (first, second)} == {
        "available"
    }

    # Every job of the page at once: the finished ones cannot be cancelled, and say why.
    page.goto(base + "/jobs?definition=build-report")
    page.get_by_label("select every job on this page").check()
    page.get_by_role("button", name="Cancel selected (3)").click()
    expect(page.get_by_role("heading", name="Cancel the 3 selected jobs?")).to_be_visible()
    expect(page.locator("table.selection")).to_contain_text("a cancelled job cannot be cancelled")
    page.get_by_label("Yes, cancel 2 jobs").check()
    page.get_by_role("button", name="Cancel 2 jobs").click()
    expect(page.locator("#bulk-summary")).to_have_text("2 jobs cancelled.")
    assert config.jobs.get(seeded.waiting, with_attempts=False).status == "cancelled"

    page.goto(base + "/jobs?definition=build-report")
    page.get_by_label("select every job on this page").check()
    page.get_by_role("button", name="Delete selected (3)").click()
    page.get_by_label("Yes, delete 3 jobs").check()
    page.get_by_role("button", name="Delete 3 jobs").click()
    expect(page.locator("#bulk-summary")).to_have_text("3 jobs deleted.")
    assert config.jobs.count(definition="build-report") == 0

    # Every failed job of charge-card, from the definitions page.
    page.goto(base + "/definitions")
    row = page.locator("table.definitions tbody tr").filter(has_text="charge-card")
    row.get_by_role("link", name="retry the failed").click()
    expect(
        page.get_by_role("heading", name="Retry the failed jobs of charge-card?")
    ).to_be_visible()
    expect(page.locator("#failed-count")).to_have_text("1")
    page.get_by_label("Yes, retry every failed job of charge-card").check()
    shot(page, "retry-failed-confirm")
    page.get_by_role("button", name="Retry failed jobs").click()
    expect(page).to_have_url(re.compile(r"/jobs\?definition=charge-card&retried=1$"))
    expect(page.get_by_role("status")).to_have_text("1 failed job of charge-card was retried.")
    shot(page, "retry-failed-done")
    assert config.jobs.get(seeded.failed, with_attempts=False).status == "available"


def test_charts_per_definition_and_queue_wait(
    page: Page, config: Config, start_dashboard: StartDashboard
) -> None:
    """A chart of finished jobs per definition, the queue wait's lines, three time ranges."""
    seed(config)
    _fail_more(config, 3)
    base = start_dashboard(allow_actions=False)
    page.goto(base + "/")
    page.get_by_role("link", name="Per definition, and queue wait").click()
    expect(page.get_by_role("heading", name="Charts", exact=True)).to_be_visible()
    figures = page.locator("figure.mini")
    expect(figures).to_have_count(3)
    card = page.locator('figure[data-definition="charge-card"]')
    expect(card).to_contain_text("0 succeeded · 4 failed (100.0 %)")
    expect(card.locator("rect.bar-failed")).not_to_have_count(0)
    expect(page.locator('figure[data-definition="send-email"] rect.bar-ok')).not_to_have_count(0)
    expect(
        page.get_by_role("img", name=re.compile("^Queue wait of the 5 jobs started"))
    ).to_be_visible()
    expect(page.locator(".line-p50 circle")).not_to_have_count(0)
    wait = page.locator("table.wait tbody tr")
    expect(wait.filter(has_text="charge-card")).to_contain_text("4")
    expect(wait.filter(has_text="build-report")).to_contain_text("1")  # due now
    expect(page.locator("[data-live-control]")).to_be_visible()
    shot(page, "charts")

    page.get_by_role("navigation", name="time range").get_by_role("link", name="24 h").click()
    expect(page).to_have_url(re.compile(r"hours=24"))
    expect(page.locator("#live-charts")).to_contain_text("Jobs finalized per 24 min")
    time_axis = page.locator("figure.mini").first.locator("text.tick[text-anchor=start]")
    expect(time_axis).to_have_text("-24 h")
    shot(page, "charts-24h")


def _background(page: Page, selector: str) -> str:
    color: str = page.locator(selector).first.evaluate("e => getComputedStyle(e).backgroundColor")
    return color


def test_dark_mode_follows_the_system_setting(
    open_page: OpenPage, config: Config, start_dashboard: StartDashboard
) -> None:
    """A browser set to dark gets dark pages, a light one light pages; no toggle needed."""
    seeded = seed(config)
    base = start_dashboard(allow_actions=True)
    light, dark = open_page(scheme="light"), open_page(scheme="dark")
    for page in (light, dark):
        page.goto(base + "/")
    assert _background(light, "body") == "rgb(245, 246, 248)"
    assert _background(light, ".panel") == "rgb(255, 255, 255)"
    assert _background(dark, "body") == "rgb(17, 21, 28)"
    assert _background(dark, ".panel") == "rgb(26, 32, 43)"
    text = dark.locator("h1").evaluate("e => getComputedStyle(e).color")
    assert text == "rgb(228, 231, 236)"
    shot(dark, "dark-overview")
    for name, path in (
        ("jobs", "/jobs"),
        ("job", f"/jobs/{seeded.failed}"),
        ("charts", "/charts"),
        ("definitions", "/definitions"),
        ("confirm", f"/jobs/bulk/retry?id={seeded.failed}&id={seeded.waiting}"),
    ):
        dark.goto(base + path)
        assert _background(dark, ".panel") == "rgb(26, 32, 43)", name
        shot(dark, f"dark-{name}")
    dark.goto(f"{base}/jobs/{seeded.failed}")
    badge = dark.locator("h1 .status-failed")
    assert badge.evaluate("e => getComputedStyle(e).color") == "rgb(255, 168, 168)"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_fits_a_phone_width_window(
    open_page: OpenPage, config: Config, start_dashboard: StartDashboard, scheme: Scheme
) -> None:
    """At 420 pixels nothing is wider than the window: the top bar wraps, its links all show."""
    seeded = seed(config)
    base = start_dashboard(allow_actions=True)
    page = open_page(width=PHONE_WIDTH, scheme=scheme)
    for name, path in (
        ("overview", "/"),
        ("jobs", "/jobs"),
        ("job", f"/jobs/{seeded.failed}"),
        ("charts", "/charts"),
        ("definitions", "/definitions"),
        ("confirm", f"/jobs/bulk/retry?id={seeded.failed}"),
    ):
        page.goto(base + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH, name
        topbar = page.locator("header.topbar")
        assert topbar.evaluate("e => e.scrollWidth <= e.clientWidth"), name
        for element in (
            *page.get_by_role("navigation", name="main").get_by_role("link").all(),
            page.locator(".brand"),
            page.locator(".mode"),
        ):
            box = element.bounding_box()
            assert box is not None, name
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE_WIDTH, (name, box)
        shot(page, f"phone-{scheme}-{name}")


def test_pause_and_resume_a_channel_and_a_definition_with_the_buttons(
    page: Page, config: Config, queue: Queue, start_dashboard: StartDashboard
) -> None:
    """The definitions page's buttons pause and resume; badges show it there and on the overview."""
    seed(config)
    base = start_dashboard(allow_actions=True)
    page.goto(base + "/definitions")
    channels = page.locator("table.channels")
    mail = channels.locator("tr").filter(has_text="mail")
    mail.get_by_role("button", name="pause").click()
    expect(mail.locator(".tag-paused")).to_be_visible()
    row = page.locator("table.definitions tbody tr").filter(has_text="charge-card")
    row.get_by_role("button", name="pause").click()
    expect(row.locator("th .tag-paused")).to_be_visible()
    assert [p.channel for p in config.channels.paused()] == ["mail"]
    assert config.definitions.paused() == ["charge-card"]
    shot(page, "definitions-paused")
    page.goto(base + "/")
    expect(
        page.locator("table.compact tr").filter(has_text="mail").locator(".tag-paused")
    ).to_be_visible()
    page.goto(base + "/definitions")
    page.locator("table.channels tr").filter(has_text="mail").get_by_role(
        "button", name="resume"
    ).click()
    page.locator("table.definitions tbody tr").filter(has_text="charge-card").get_by_role(
        "button", name="resume"
    ).click()
    expect(page.locator(".tag-paused")).to_have_count(0)
    assert (config.channels.paused(), config.definitions.paused()) == ([], [])


def test_the_job_page_draws_its_workflow_and_links_each_job(
    open_page: OpenPage, config: Config, start_dashboard: StartDashboard
) -> None:
    """A chord's callback: a box per member, its own box outlined, a click opens a member;
    dark colors in the dark theme, and a phone scrolls the drawing, not the page."""
    members = JobDefinition(config, name="fetch-page", job_function=charge, channel="idle")
    merge = JobDefinition(config, name="merge-pages", job_function=charge, channel="idle")
    workflow = chord([members.job({"to": f"page-{n}"}) for n in range(6)], then=merge.job({}))
    assert workflow.callback is not None
    base = start_dashboard(allow_actions=False)

    page = open_page()
    page.goto(f"{base}/jobs/{workflow.callback.id}")
    graph = page.get_by_role(
        "img", name=re.compile(f"^Dependency graph of job {workflow.callback.id}")
    )
    expect(graph).to_be_visible()
    expect(graph.locator("a.node")).to_have_count(7)
    expect(graph.locator("a.node-current")).to_contain_text(f"#{workflow.callback.id} merge-pages")
    expect(graph.locator("path.edge")).to_have_count(6)
    shot(page, "job-workflow")
    first = workflow.jobs[0].id
    graph.locator("a.node").filter(has_text=f"#{first} fetch-page").click()
    expect(page.get_by_role("heading", name=f"Job {first} available")).to_be_visible()
    expect(page.locator("svg.graph a.node-current")).to_contain_text(f"#{first}")

    dark = open_page(scheme="dark")
    dark.goto(f"{base}/jobs/{workflow.callback.id}")
    box = dark.locator("svg.graph a.node-current rect")
    assert box.evaluate("e => getComputedStyle(e).fill") == "rgb(43, 35, 67)"  # --waiting-bg
    shot(dark, "dark-job-workflow")

    phone = open_page(width=PHONE_WIDTH)
    phone.goto(f"{base}/jobs/{workflow.callback.id}")
    expect(phone.locator("svg.graph")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH
    shot(phone, "phone-job-workflow")
