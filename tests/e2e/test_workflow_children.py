"""Dependency results in Worker(processes=N): the child asks its parent, which reads them.

The child holds no database connection; ``ctx.dependency_results()`` sends a
question on the child's pipe and the worker answers with the rows it read.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

from orchestra import Config, JobDefinition, Worker, chord
from orchestra.testing import drain
from tests._running import running
from tests.e2e.apps import workflow_jobs as jobs


def test_a_child_reads_its_dependencies_results_sync_typed_and_async(config: Config) -> None:
    """A def job, a def job with as_type, and an async def job, each in a child process."""
    squares = JobDefinition(config, name="square", job_function=jobs.square)
    callbacks = [
        JobDefinition(config, name=name, job_function=function)
        for name, function in (
            ("total", jobs.total),
            ("total-typed", jobs.total_typed),
            ("total-async", jobs.total_async),
        )
    ]
    workflows = [
        chord([squares.job({"n": n}) for n in (1, 2, 3)], then=callback.job({}))
        for callback in callbacks
    ]
    with running(Worker(config, processes=2, process_interval_ms=50), join_timeout=60):
        values = [workflow.result(timeout=60) for workflow in workflows]
    assert [value["total"] for value in values] == [14, 14, 14]
    assert values[0]["ids"] == [job.id for job in workflows[0].jobs]
    assert os.getpid() not in {value["pid"] for value in values}


def test_a_child_gets_the_missing_dependency_error_naming_the_id(
    config: Config, db: psycopg.Connection[Any]
) -> None:
    """A dependency the history dropped: DependencyResultError in the child, with its id."""
    squares = JobDefinition(config, name="square", job_function=jobs.square)
    reader = JobDefinition(config, name="missing", job_function=jobs.missing)
    kept, dropped = squares.defer({"n": 1}), squares.defer({"n": 2})
    handle = reader.defer({}, depends_on=[kept, dropped])
    drain(config, definitions=[squares])
    db.execute(f'DELETE FROM "{config.schema}".job_history WHERE id = %s', [dropped.id])
    with running(Worker(config, processes=1, process_interval_ms=50), join_timeout=60):
        value = handle.result(timeout=60)
    assert value["job_ids"] == [dropped.id]
    assert f"job {dropped.id} is no longer kept by the history" in value["error"]
