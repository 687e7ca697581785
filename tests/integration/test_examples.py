"""Every script in examples/ runs to completion against a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestra.cli import load_app
from tests.conftest import REPO

SCRIPTS = [
    "quickstart",
    "transactional_defer",
    "retries",
    "dependencies",
    "workflows",
    "request_response",
    "dedup",
    "resource_lock",
    "priorities",
    "child_processes",
    "callbacks",
    "manage_jobs",
    "channels_and_pause",
    "snooze_and_cancel",
    "tags_and_progress",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script: str, test_dsn: str, schema: str) -> None:
    """The example exits 0 and prints what it promises."""
    env = {
        **os.environ,
        "ORCHESTRA_DSN": test_dsn,
        "EXAMPLE_SCHEMA": schema,
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / f"{script}.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = {
        "quickstart": "statuses: ['succeeded', 'succeeded', 'succeeded']",
        "transactional_defer": "rolled-back job: does not exist",
        "retries": "(3, 'succeeded', None)",
        "dependencies": "order: ['extract-a', 'extract-b', 'merge', 'load']",
        "workflows": "crawl: {'pages': 3, 'words': 6600}\nchain: 427",
        "request_response": "job 2 failed: ValueError: quantity must be positive",
        "dedup": "after it ran: new job True",
        "resource_lock": "attempts spent per job: [1, 1, 1, 1, 1, 1]",
        "priorities": "order: ['vip', 'page-oncall', 'bulk-1', 'bulk-2', 'bulk-3', 'cleanup']",
        "child_processes": "fragile: survived on attempt 2",
        "callbacks": "job 2 failed for good after 2 attempts: ValueError: negative amount",
        "manage_jobs": "results: ['account 0 synced', 'account 1 synced', 'account 2 synced']",
        "channels_and_pause": "order: ['report-1', 'email-1', 'report-2', 'report-3', 'report-4']",
        "snooze_and_cancel": "then ran as attempt 1 of 1\ncrunch: cancelled, attempt log "
        "[(1, 'cancelled')]",
        "tags_and_progress": "while running: running, progress {'done': 5, 'total': 10}\n"
        "result: {'billed': 10, 'tenant': 42}\n"
        "tags ['billing', 'eu'], meta {'tenant': 42}, final progress {'done': 10, 'total': 10}\n"
        "billing jobs finished: 2",
    }[script]
    assert expected in done.stdout


def test_app_example_loads_for_the_cli(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples.app:config is what ``orchestra daemon --app`` expects: a Config with definitions."""
    monkeypatch.setenv("EXAMPLE_SCHEMA", schema)
    monkeypatch.chdir(REPO)
    config = load_app("examples.app:config")
    assert "resize-image" in config.definitions
