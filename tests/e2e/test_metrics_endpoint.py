"""``orchestra daemon --metrics-port``: a real daemon process serving ``/metrics``.

Each test scrapes the endpoint with urllib as Prometheus would, waiting with a
deadline for the counters to show what happened, and keeps the body of one
scrape under ``tests/artifacts/metrics/``.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestra import JobDefinition
from orchestra.testing import wait_until
from tests.e2e._support import APP, REPO, DaemonFactory, Queue, one_line, orchestra_argv, stays_true

ARTIFACTS = REPO / "tests" / "artifacts" / "metrics"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> str | None:
    """The body of ``GET /metrics``, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body: bytes = response.read()
            assert response.status == 200
            return body.decode()
    except (urllib.error.URLError, ConnectionError):
        return None


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(body: str, name: str, **labels: str) -> float | None:
    """One sample of an exposition, or None when absent."""
    return samples(body).get((name, frozenset(labels.items())))


def scrape_when(port: int, name: str, expected: float, **labels: str) -> str:
    """Scrape until ``name{labels}`` equals ``expected``; return that body."""

    def ready() -> str | None:
        body = scrape(port)
        if body is not None and value(body, name, **labels) == expected:
            return body
        return None

    body: str = wait_until(
        ready, timeout=30, interval=0.1, message=f"{name}{labels} never reached {expected}"
    )
    return body


def keep(body: str, name: str) -> Path:
    """Save a scrape as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(body, "utf-8")
    return path


def test_worker_serves_live_counters(
    queue: Queue, jobs: dict[str, JobDefinition[Any]], daemons: DaemonFactory
) -> None:
    """A worker started with --metrics-port counts the jobs it ran; its idle loop logs nothing."""
    port = free_port()
    worker = daemons.start(extra=["--metrics-port", str(port)], concurrency=2)
    for n in range(5):
        jobs["quick"].defer({"n": n})

    body = scrape_when(port, "orchestra_jobs_succeeded_total", 5, definition="quick")
    keep(body, "worker.txt")
    assert value(body, "orchestra_jobs_claimed_total", definition="quick") == 5
    assert value(body, "orchestra_job_duration_seconds_count", definition="quick") == 5
    assert value(body, "orchestra_job_queue_wait_seconds_count", definition="quick") == 5
    assert value(body, "orchestra_jobs_failed_total", definition="quick") is None
    assert value(body, "orchestra_leader") == 0  # a worker-only process never leads
    assert "job_id" not in body
    assert "_created" not in body
    assert "process_cpu_seconds_total" in body  # the default registry's process metrics too

    # Idle polling (every 100 ms here) adds no line at the default level, INFO.
    log = worker.log()
    assert stays_true(lambda: worker.log() == log, 1.0), worker.log()[len(log) :]
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    lines = [line for line in worker.log().splitlines() if line.strip()]
    expected = (
        "serving Prometheus metrics",
        "DaemonStarted",
        "worker 'e2e', serving channel",  # the start-up line saying what it serves
        "WorkerJobSucceeded",
        "DaemonStopRequested",
        "DaemonStopped",
    )
    unexpected = [line for line in lines if not any(kind in line for kind in expected)]
    assert unexpected == []
    assert sum("WorkerJobSucceeded" in line for line in lines) == 5


def test_role_all_serves_the_orchestrator_gauges(
    queue: Queue, jobs: dict[str, JobDefinition[Any]], daemons: DaemonFactory
) -> None:
    """With --role all the leader's gauges (queue depth, live daemons, leader) share the endpoint."""
    port = free_port()
    daemons.start(role="all", extra=["--metrics-port", str(port)])
    jobs["quick"].defer({"n": 1})
    scrape_when(port, "orchestra_jobs_succeeded_total", 1, definition="quick")
    # The leader's first snapshot follows its other maintenance passes: wait for it.
    body = scrape_when(port, "orchestra_daemons", 1, role="orchestrator")
    keep(body, "all.txt")
    assert value(body, "orchestra_leader") == 1
    depth = {
        labels: sample
        for (name, labels), sample in samples(body).items()
        if name == "orchestra_jobs"
    }
    statuses = {dict(labels)["status"] for labels in depth}
    assert statuses == {"waiting", "scheduled", "available", "running"}
    assert {dict(labels)["channel"] for labels in depth} == {"_default"}
    assert "_created" not in body


def test_metrics_port_in_use_is_a_clean_error(e2e_env: dict[str, str], schema: str) -> None:
    """A port that cannot be bound exits 1 with one readable line, before any daemon starts."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = subprocess.run(
            orchestra_argv("daemon", "--role", "worker", "--app", APP, "--metrics-port", str(port)),
            env=e2e_env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert f"--metrics-port {port}: cannot serve metrics" in one_line(output)


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_metrics_port_must_be_a_port(e2e_env: dict[str, str], port: str) -> None:
    """--metrics-port takes 1 to 65535; anything else is a usage error (exit 2)."""
    result = subprocess.run(
        orchestra_argv("daemon", "--role", "worker", "--app", APP, "--metrics-port", port),
        env=e2e_env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--metrics-port" in result.stderr


def test_a_worker_with_queue_metrics_exports_the_queue_gauges(
    queue: Queue, jobs: dict[str, JobDefinition[Any]], daemons: DaemonFactory
) -> None:
    """--queue-metrics: a worker alone, no orchestrator, exports jobs per status, live
    daemons and each channel's oldest due job, read from the database when scraped."""
    port = free_port()
    daemons.start(extra=["--metrics-port", str(port), "--queue-metrics"], concurrency=2)
    jobs["quick"].defer({"n": 1})
    body = scrape_when(port, "orchestra_daemons", 1, role="worker")
    keep(body, "worker-queue.txt")
    assert value(body, "orchestra_leader") == 0
    statuses = {
        dict(labels)["status"]
        for (name, labels), _sample in samples(body).items()
        if name == "orchestra_jobs"
    }
    assert statuses == {"waiting", "scheduled", "available", "running"}
    assert value(body, "orchestra_oldest_due_job_age_seconds", channel="_default") is not None


def test_queue_metrics_without_a_metrics_port_is_a_usage_error(e2e_env: dict[str, str]) -> None:
    """--queue-metrics alone serves nothing: one usage line, exit 2, no daemon started."""
    result = subprocess.run(
        orchestra_argv("daemon", "--role", "worker", "--app", APP, "--queue-metrics"),
        env=e2e_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--queue-metrics needs --metrics-port" in result.stderr
