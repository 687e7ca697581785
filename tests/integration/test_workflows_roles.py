"""Workflows under the least-privilege roles of ``deploy/sql/roles.sql``: a producer defers a
chord (its jobs and their edges), a worker runs it, and the callback reads its members'
results as the worker role; the dashboard role reads the graph."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobContext, JobDefinition, Worker, chord
from tests._roles import Roles


@pytest.fixture
def roles(config: Config, test_dsn: str, schema: str) -> Iterator[Roles]:
    """roles.sql applied to the test's migrated schema, with LOGIN roles; dropped afterwards."""
    with psycopg.connect(test_dsn, autocommit=True) as admin:
        applied = Roles(test_dsn, schema)
        try:
            assert applied.apply(admin) == []
            applied.create_logins(admin)
            config.close()  # its pool must not hold the schema when the roles are dropped
            yield applied
        finally:
            applied.drop(admin)


def square(payload: dict[str, int]) -> int:
    return payload["n"] ** 2


def total(payload: Any, ctx: JobContext) -> int:
    return sum(ctx.dependency_results().values())


def define(config: Config) -> tuple[JobDefinition[Any], JobDefinition[Any]]:
    return (
        JobDefinition(config, name="square", job_function=square),
        JobDefinition(config, name="total", job_function=total),
    )


def test_a_producer_defers_a_chord_and_a_worker_runs_it_reading_results(roles: Roles) -> None:
    """The edges are the producer's own; the results are read with the worker's SELECT."""
    with (
        roles.config("producer") as producer,
        roles.config("worker") as worker_config,
        roles.config("dashboard") as dashboard,
    ):
        squares, totals = define(producer)
        define(worker_config)
        workflow = chord([squares.job({"n": n}) for n in (1, 2, 3)], then=totals.job({}))
        worker = Worker(worker_config, concurrency=2, process_interval_ms=50)
        worker.start()
        try:
            assert workflow.result(timeout=30) == 14
        finally:
            worker.stop()
            worker.join(timeout=30)
        assert workflow.callback is not None
        graph = dashboard.jobs.graph(workflow.callback)
        assert [n.status for n in graph.upstream] == ["succeeded"] * 3
