"""Unit tests of orchestra.otel and of the producer's trace context, without a database.

Spans go to the SDK's InMemorySpanExporter through a TracerProvider of the test's
own (the global provider is never set: it can be set only once per process).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orchestra import ConfigurationError, JobDefinition, _defer, events
from orchestra.otel import MAX_OPEN_SPANS, OpenTelemetryHandler

E = TypeVar("E", bound=events.Event)
T0 = dt.datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(milliseconds=250)


def ns(timestamp: dt.datetime) -> int:
    """Nanoseconds since the epoch, computed independently of the module under test."""
    return int(timestamp.timestamp()) * 1_000_000_000 + timestamp.microsecond * 1000


def make(cls: type[E], *, timestamp: dt.datetime = T0, daemon_id: int = 1, **fields: Any) -> E:
    """An event of ``cls`` with the envelope filled in."""
    return cls(
        timestamp=timestamp, daemon_id=daemon_id, daemon_name="t-worker", role="worker", **fields
    )


def claimed(
    job_id: int = 1,
    *,
    attempt: int = 1,
    trace_context: str | None = None,
    daemon_id: int = 1,
    timestamp: dt.datetime = T0,
    tags: tuple[str, ...] = (),
) -> events.WorkerJobClaimed:
    """A WorkerJobClaimed of definition ``send``."""
    return make(
        events.WorkerJobClaimed,
        timestamp=timestamp,
        daemon_id=daemon_id,
        job_id=job_id,
        definition="send",
        attempt=attempt,
        max_attempts=3,
        queue_wait_ms=42,
        trace_context=trace_context,
        tags=tags,
    )


def succeeded(
    job_id: int = 1, *, attempt: int = 1, daemon_id: int = 1
) -> events.WorkerJobSucceeded:
    """The WorkerJobSucceeded matching :func:`claimed`, at T1."""
    return make(
        events.WorkerJobSucceeded,
        timestamp=T1,
        daemon_id=daemon_id,
        job_id=job_id,
        definition="send",
        attempt=attempt,
        duration_ms=250,
    )


def failed(
    *, will_retry: bool, cls: type[events.WorkerJobFailed] = events.WorkerJobFailed
) -> events.WorkerJobFailed:
    """A failure of job 1, attempt 1, at T1."""
    return make(
        cls,
        timestamp=T1,
        job_id=1,
        definition="send",
        attempt=1,
        max_attempts=3,
        error="RuntimeError: boom",
        will_retry=will_retry,
        retry_at=T1 if will_retry else None,
        duration_ms=250,
    )


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Where the test's spans end up."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A TracerProvider of the test's own exporting synchronously to ``exporter``."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
def handler(provider: TracerProvider) -> OpenTelemetryHandler:
    """The handler under test."""
    return OpenTelemetryHandler(provider)


def producer_context(provider: TracerProvider) -> tuple[str, trace.SpanContext]:
    """A trace context as defer stores it, from inside a producer span; and that span's context."""
    with provider.get_tracer("producer").start_as_current_span("deferring") as span:
        stored = _defer.current_trace_context()
    assert stored is not None
    return stored, span.get_span_context()


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one finished span."""
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, spans
    return spans[0]


class TestProducerContext:
    def test_none_outside_a_span(self) -> None:
        """Without a current valid span, defer stores NULL."""
        assert _defer.current_trace_context() is None

    def test_none_inside_an_invalid_span(self) -> None:
        """The non-recording INVALID_SPAN (what a tracer without SDK returns) stores nothing."""
        with trace.use_span(trace.INVALID_SPAN):
            assert _defer.current_trace_context() is None

    def test_w3c_traceparent_as_compact_json(self, provider: TracerProvider) -> None:
        """Inside a span, the global (W3C) propagator's carrier is stored as compact JSON."""
        stored, context = producer_context(provider)
        carrier = json.loads(stored)
        assert carrier["traceparent"] == (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        )
        assert " " not in stored

    def test_none_when_opentelemetry_is_not_imported(
        self, provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without opentelemetry.trace in sys.modules (not installed, or never imported), nothing is stored."""
        with provider.get_tracer("producer").start_as_current_span("deferring"):
            monkeypatch.delitem(sys.modules, "opentelemetry.trace")
            assert _defer.current_trace_context() is None

    def test_import_orchestra_does_not_import_opentelemetry(self) -> None:
        """A producer that does not trace pays no OpenTelemetry import."""
        code = "import sys, orchestra; print('opentelemetry' in sys.modules)"
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "False"

    def test_the_insert_parameters_carry_it(self, cfg: Any, provider: TracerProvider) -> None:
        """defer and defer_many pass it as %(trace_context)s; NULL outside a span."""
        definition = JobDefinition(cfg, name="send", job_function=lambda: None)
        params = definition._insert_params({}, 0, None, None, (), None, None, None)
        many = definition._many_params([{}, {}], 0, None, None, None)
        assert params["trace_context"] is None
        assert many["trace_context"] is None
        with provider.get_tracer("producer").start_as_current_span("deferring"):
            params = definition._insert_params({}, 0, None, None, (), None, None, None)
            many = definition._many_params([{}, {}], 0, None, None, None)
        assert "traceparent" in json.loads(params["trace_context"])
        assert many["trace_context"] == params["trace_context"]


class TestSpans:
    def test_success_is_a_child_of_the_producer_span(
        self,
        handler: OpenTelemetryHandler,
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """A claimed job with a trace context gets a CONSUMER span parented to the producer's."""
        stored, producer = producer_context(provider)
        exporter.clear()
        handler(claimed(trace_context=stored))
        assert exporter.get_finished_spans() == ()
        handler(succeeded())
        span = only_span(exporter)
        assert span.name == "orchestra.job send"
        assert span.kind is SpanKind.CONSUMER
        assert span.context is not None
        assert span.context.trace_id == producer.trace_id
        assert span.parent is not None
        assert span.parent.span_id == producer.span_id
        assert span.parent.is_remote
        assert span.status.status_code is StatusCode.OK
        assert dict(span.attributes or {}) == {
            "messaging.system": "orchestra",
            "messaging.operation.type": "process",
            "orchestra.job.id": 1,
            "orchestra.job.definition": "send",
            "orchestra.job.attempt": 1,
            "orchestra.job.max_attempts": 3,
            "orchestra.job.queue_wait_ms": 42,
            "orchestra.job.outcome": "succeeded",
            "orchestra.job.duration_ms": 250,
        }
        assert span.start_time == ns(T0)
        assert span.end_time == ns(T1)
        assert handler.open_spans == 0

    def test_a_tagged_jobs_span_carries_its_tags(
        self, handler: OpenTelemetryHandler, exporter: InMemorySpanExporter
    ) -> None:
        """orchestra.job.tags, a string array, only when the job has tags."""
        handler(claimed(tags=("billing", "eu")))
        handler(succeeded())
        attributes = dict(only_span(exporter).attributes or {})
        assert attributes["orchestra.job.tags"] == ("billing", "eu")

    def test_without_trace_context_a_root_span_even_inside_an_ambient_span(
        self,
        handler: OpenTelemetryHandler,
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """No stored context: a root span, never a child of whatever span the worker runs in."""
        with provider.get_tracer("ambient").start_as_current_span("worker-main") as ambient:
            handler(claimed())
            handler(succeeded())
        spans = [s for s in exporter.get_finished_spans() if s.name == "orchestra.job send"]
        assert len(spans) == 1
        assert spans[0].parent is None
        assert spans[0].context is not None
        assert spans[0].context.trace_id != ambient.get_span_context().trace_id

    @pytest.mark.parametrize("stored", ["not json", "[1, 2]", '{"traceparent": "garbage"}'])
    def test_a_corrupt_trace_context_gives_a_root_span(
        self, handler: OpenTelemetryHandler, exporter: InMemorySpanExporter, stored: str
    ) -> None:
        """A stored context that does not parse is ignored rather than failing the handler."""
        handler(claimed(trace_context=stored))
        handler(succeeded())
        assert only_span(exporter).parent is None

    @pytest.mark.parametrize("will_retry", [True, False])
    def test_failure_is_an_error_with_the_error_text(
        self, handler: OpenTelemetryHandler, exporter: InMemorySpanExporter, will_retry: bool
    ) -> None:
        """A failed attempt: status ERROR with the error, will_retry and error.type attributes."""
        handler(claimed())
        handler(failed(will_retry=will_retry))
        span = only_span(exporter)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "RuntimeError: boom"
        attributes = span.attributes or {}
        assert attributes["orchestra.job.will_retry"] is will_retry
        assert attributes["orchestra.job.outcome"] == "failed"
        assert attributes["error.type"] == "RuntimeError"
        assert span.end_time == ns(T1)

    def test_payload_invalid_is_an_error_too(
        self, handler: OpenTelemetryHandler, exporter: InMemorySpanExporter
    ) -> None:
        """WorkerJobPayloadInvalid ends the span as an error, marked payload_invalid."""
        handler(claimed())
        handler(failed(will_retry=False, cls=events.WorkerJobPayloadInvalid))
        span = only_span(exporter)
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["orchestra.job.outcome"] == "payload_invalid"

    def test_released_and_fenced_end_the_span_without_status(
        self, handler: OpenTelemetryHandler, exporter: InMemorySpanExporter
    ) -> None:
        """A job handed back unrun, or a refused finish, ends its span with the status unset."""
        handler(claimed(1))
        handler(claimed(2))
        common: dict[str, Any] = {"timestamp": T1, "definition": "send", "attempt": 1}
        handler(
            make(
                events.WorkerJobReleased,
                job_id=1,
                reason="unknown_definition",
                retry_at=T1,
                **common,
            )
        )
        handler(make(events.WorkerJobFenced, job_id=2, outcome="succeeded", **common))
        spans = {(s.attributes or {})["orchestra.job.id"]: s for s in exporter.get_finished_spans()}
        assert spans[1].status.status_code is StatusCode.UNSET
        assert (spans[1].attributes or {})["orchestra.job.outcome"] == "released"
        assert (spans[1].attributes or {})["orchestra.job.release_reason"] == "unknown_definition"
        assert spans[2].status.status_code is StatusCode.UNSET
        assert (spans[2].attributes or {})["orchestra.job.outcome"] == "fenced"
        assert (spans[2].attributes or {})["orchestra.job.fenced_outcome"] == "succeeded"
        assert handler.open_spans == 0

    def test_spans_are_matched_by_daemon_job_and_attempt(
        self, handler: OpenTelemetryHandler, exporter: InMemorySpanExporter
    ) -> None:
        """Each end event ends the span of its own (daemon, job, attempt) and no other."""
        handler(claimed(1, attempt=1, daemon_id=1))
        handler(claimed(1, attempt=2, daemon_id=1))
        handler(claimed(1, attempt=1, daemon_id=2))
        handler(succeeded(1, attempt=2, daemon_id=1))
        span = only_span(exporter)
        assert (span.attributes or {})["orchestra.job.attempt"] == 2
        assert handler.open_spans == 2
        handler(succeeded(1, attempt=1, daemon_id=2))
        handler(succeeded(1, attempt=1, daemon_id=1))
        assert len(exporter.get_finished_spans()) == 3
        assert handler.open_spans == 0

    def test_an_end_without_a_claim_is_ignored(
        self, handler: OpenTelemetryHandler, exporter: InMemorySpanExporter
    ) -> None:
        """An end event whose claim this handler never saw does nothing."""
        handler(succeeded(99))
        handler(failed(will_retry=True))
        assert exporter.get_finished_spans() == ()

    def test_other_events_are_ignored(
        self, handler: OpenTelemetryHandler, exporter: InMemorySpanExporter
    ) -> None:
        """Events other than a job's claim and end make no span."""
        handler(make(events.DaemonStarted, host="h", pid=1))
        handler(make(events.WorkerListenRestored))
        assert exporter.get_finished_spans() == ()
        assert handler.open_spans == 0


class TestBound:
    def test_the_oldest_open_span_is_dropped_beyond_the_bound(
        self, provider: TracerProvider, exporter: InMemorySpanExporter
    ) -> None:
        """Beyond max_open_spans the oldest is dropped unended: its end event then does nothing."""
        handler = OpenTelemetryHandler(provider, max_open_spans=2)
        for job_id in (1, 2, 3):
            handler(claimed(job_id))
        assert handler.open_spans == 2
        assert handler.dropped == 1
        for job_id in (1, 2, 3):
            handler(succeeded(job_id))
        ids = sorted(
            str((s.attributes or {})["orchestra.job.id"]) for s in exporter.get_finished_spans()
        )
        assert ids == ["2", "3"]
        assert handler.open_spans == 0

    def test_default_bound(self, handler: OpenTelemetryHandler) -> None:
        """The default bound is 100k open spans."""
        assert handler.max_open_spans == MAX_OPEN_SPANS == 100_000

    @pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
    def test_bad_bound_is_refused(self, bad: Any) -> None:
        """max_open_spans must be a positive int."""
        with pytest.raises(ConfigurationError) as info:
            OpenTelemetryHandler(max_open_spans=bad)
        assert info.value.argument == "max_open_spans"


class TestMissingExtra:
    def test_import_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without opentelemetry-api, importing orchestra.otel says which extra to install."""
        monkeypatch.setitem(sys.modules, "opentelemetry", None)
        monkeypatch.delitem(sys.modules, "orchestra.otel")
        with pytest.raises(ImportError, match=r"orchestra-queue\[otel\]"):
            importlib.import_module("orchestra.otel")
