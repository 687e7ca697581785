"""orchestra.testing helpers that touch the database."""

from __future__ import annotations

from typing import Any

from orchestra import Config, JobDefinition
from orchestra.testing import run_until_empty, runnable_jobs


def test_runnable_jobs_counts_due_unfinished_jobs_of_a_channel(config: Config) -> None:
    """runnable_jobs counts due, unfinished jobs of its channel, waiting ones included, not delayed ones."""
    here = JobDefinition(config, name="here", job_function=lambda p: None)
    elsewhere = JobDefinition(
        config, name="elsewhere", job_function=lambda p: None, channel="other"
    )
    first = here.defer({})
    here.defer({}, depends_on=[first])  # waiting
    here.defer({}, delay_ms=3_600_000)  # not due
    elsewhere.defer({})
    assert runnable_jobs(config) == 2
    assert runnable_jobs(config, "other") == 1


def test_run_until_empty_drains_the_channel(config: Config) -> None:
    """run_until_empty runs a worker until the channel has nothing due left, then stops it."""
    ran: list[Any] = []
    step = JobDefinition(config, name="step", job_function=ran.append)
    first = step.defer({"n": 1})
    step.defer({"n": 2}, depends_on=[first])
    worker = run_until_empty(config, concurrency=2, timeout=30)
    assert ran == [{"n": 1}, {"n": 2}]
    assert worker.stats.succeeded == 2
    assert runnable_jobs(config) == 0
