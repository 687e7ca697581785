"""Tracing against a real PostgreSQL: the producer's context is stored with the job, a real
Worker with an OpenTelemetryHandler exports one span per attempt, parented to the producer.

The SDK's TracerProvider is the test's own (the global one is never set); the producer's
span is made current with it, which is all defer looks at.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orchestra import Config, JobContext, JobDefinition, Worker, events
from orchestra._orchestrator._sweeper import Sweeper
from orchestra.otel import OpenTelemetryHandler
from orchestra.testing import EventRecorder
from tests._finished_jobs import finish_by_sql


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


def fail_first(payload: Any, ctx: JobContext) -> None:
    """Fails its first attempt, succeeds on the next."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Where the spans end up."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A TracerProvider of the test's own, exporting synchronously."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


def stored_context(db: psycopg.Connection[Any], config: Config, job_id: int) -> str | None:
    """The trace_context column of a job."""
    row = db.execute(
        f'SELECT trace_context FROM "{config.schema}".all_jobs WHERE id = %s', [job_id]
    ).fetchone()
    assert row is not None
    value: str | None = row[0]
    return value


def run_worker(config: Config, provider: TracerProvider, succeeded: int) -> None:
    """Run a Worker with the handler until ``succeeded`` jobs succeeded."""
    recorder = EventRecorder()  # after the tracing handler: spans are ended when it records
    worker = Worker(
        config,
        concurrency=2,
        process_interval_ms=50,
        event_handler=[OpenTelemetryHandler(provider), recorder],
    )
    worker.start()
    try:
        recorder.wait_for(events.WorkerJobSucceeded, count=succeeded, timeout=30)
    finally:
        worker.stop()
        worker.join(timeout=30)


def job_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The exported job spans, by job id then attempt."""
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("orchestra.job ")]
    return sorted(
        spans,
        key=lambda s: (
            (s.attributes or {})["orchestra.job.id"],
            (s.attributes or {})["orchestra.job.attempt"],
        ),
    )


def test_job_spans_are_children_of_the_producer_span(
    config: Config,
    db: psycopg.Connection[Any],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """Every attempt of a job deferred in a span is a CONSUMER child of it; a job without one is a root."""
    flaky = JobDefinition(
        config, name="flaky", job_function=fail_first, num_attempts=2, backoff="none"
    )
    plain = JobDefinition(config, name="plain", job_function=noop)
    with provider.get_tracer("producer").start_as_current_span("checkout") as producer:
        traced = flaky.defer({"n": 1})
    untraced = plain.defer({"n": 2})
    producer_context = producer.get_span_context()

    stored = stored_context(db, config, traced.id)
    assert stored is not None
    assert json.loads(stored)["traceparent"].split("-")[1:3] == [
        f"{producer_context.trace_id:032x}",
        f"{producer_context.span_id:016x}",
    ]
    assert stored_context(db, config, untraced.id) is None

    run_worker(config, provider, succeeded=2)

    spans = job_spans(exporter)
    assert [
        ((s.attributes or {})["orchestra.job.id"], (s.attributes or {})["orchestra.job.attempt"])
        for s in spans
    ] == [(traced.id, 1), (traced.id, 2), (untraced.id, 1)]
    first, second, root = spans
    for span in (first, second):
        assert span.name == "orchestra.job flaky"
        assert span.kind is SpanKind.CONSUMER
        assert span.context is not None
        assert span.context.trace_id == producer_context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == producer_context.span_id
        assert (span.attributes or {})["messaging.system"] == "orchestra"
        assert span.start_time is not None
        assert span.end_time is not None
        assert span.start_time <= span.end_time
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "RuntimeError: first attempt fails"
    assert (first.attributes or {})["orchestra.job.will_retry"] is True
    assert second.status.status_code is StatusCode.OK
    assert root.parent is None
    assert root.context is not None
    assert root.context.trace_id != producer_context.trace_id


def test_every_insert_path_stores_the_context(
    config: Config, db: psycopg.Connection[Any], provider: TracerProvider
) -> None:
    """defer (plain and with dependencies), defer_many and their async twins store it."""
    job = JobDefinition(config, name="job", job_function=noop)
    tracer = provider.get_tracer("producer")

    async def defer_async() -> list[int]:
        with tracer.start_as_current_span("async-producer"):
            one = await job.defer_async({"n": "async"})
            many = await job.defer_many_async([{"n": "a1"}, {"n": "a2"}])
        return [one.id, *(h.id for h in many)]

    with tracer.start_as_current_span("producer") as producer:
        first = job.defer({"n": 1})
        dependent = job.defer({"n": 2}, depends_on=[first])  # job_insert, not _simple
        batch = job.defer_many([{"n": 3}, {"n": 4}])
        with config.connection() as conn, conn.transaction():
            in_transaction = job.defer({"n": 5}, conn=conn)
    trace_id = f"{producer.get_span_context().trace_id:032x}"
    for handle in (first, dependent, *batch, in_transaction):
        stored = stored_context(db, config, handle.id)
        assert stored is not None, handle
        assert json.loads(stored)["traceparent"].split("-")[1] == trace_id
    for job_id in asyncio.run(defer_async()):
        stored = stored_context(db, config, job_id)
        assert stored is not None
        assert json.loads(stored)["traceparent"].split("-")[1] != trace_id  # its own trace
    for handle in job.defer_many([{"n": 6}]):
        assert stored_context(db, config, handle.id) is None


def test_the_history_keeps_the_context(
    config: Config, db: psycopg.Connection[Any], provider: TracerProvider
) -> None:
    """A finished job keeps its trace_context in job_history, through a sweeper pass."""
    job = JobDefinition(config, name="job", job_function=noop)
    with provider.get_tracer("producer").start_as_current_span("producer"):
        handle = job.defer({"n": 1})
    stored = stored_context(db, config, handle.id)
    finish_by_sql(db, config, handle.id, "succeeded")
    sweeper = Sweeper(
        config,
        interval_ms=300_000,
        finalized_job_threshold_ms=3_600_000,
        stale_definition_threshold_ms=3_600_000,
        archive=True,
    )
    sweeper.run_once(db, dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    row = db.execute(
        f'SELECT trace_context FROM "{config.schema}".job_history WHERE id = %s', [handle.id]
    ).fetchone()
    assert row == (stored,)
    assert stored is not None
