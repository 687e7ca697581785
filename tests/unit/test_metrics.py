"""Unit tests of orchestra.metrics: PrometheusHandler fed with real event classes.

Every test uses a fresh CollectorRegistry and reads the samples back with
``registry.get_sample_value``, the way Prometheus would see them.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import math
import sys
import urllib.request
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from orchestra import Config, ConfigurationError, events
from orchestra.handlers import JsonFormatter, LoggingHandler
from orchestra.metrics import DURATION_BUCKETS_S, PrometheusHandler, serve_metrics
from tests.unit._support import SECRET, SECRET_URI

E = TypeVar("E", bound=events.Event)
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ALLOWED_LABELS = {"definition", "channel", "status", "role", "reason", "operation", "service", "le"}


def make(cls: type[E], role: events.Role = "worker", **fields: Any) -> E:
    """An event of ``cls`` with the envelope filled in."""
    return cls(timestamp=NOW, daemon_id=1, daemon_name=f"t-{role}", role=role, **fields)


def claimed(definition: str = "send", queue_wait_ms: int = 3, job_id: int = 1) -> events.Event:
    """A WorkerJobClaimed."""
    return make(
        events.WorkerJobClaimed,
        job_id=job_id,
        definition=definition,
        attempt=1,
        max_attempts=3,
        queue_wait_ms=queue_wait_ms,
    )


def failed(
    definition: str = "send",
    *,
    will_retry: bool,
    duration_ms: int = 20,
    cls: type[events.WorkerJobFailed] = events.WorkerJobFailed,
) -> events.Event:
    """A WorkerJobFailed (or a subclass)."""
    return make(
        cls,
        job_id=1,
        definition=definition,
        attempt=1,
        max_attempts=3,
        error="RuntimeError: boom",
        will_retry=will_retry,
        retry_at=NOW if will_retry else None,
        duration_ms=duration_ms,
    )


def gauges(
    depth: tuple[tuple[str, str, int], ...], workers: dict[str, int] | None = None
) -> events.OrchestratorQueueGauges:
    """An OrchestratorQueueGauges."""
    return make(
        events.OrchestratorQueueGauges,
        role="orchestrator",
        depth=depth,
        workers=workers if workers is not None else {"worker": 0, "orchestrator": 1},
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of the test's own."""
    return CollectorRegistry()


@pytest.fixture
def handler(registry: CollectorRegistry) -> PrometheusHandler:
    """A PrometheusHandler on the test's registry."""
    return PrometheusHandler(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}``, or None when absent."""
    return registry.get_sample_value(name, labels)


class TestJobCounters:
    def test_claims_count_and_observe_queue_wait(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Each claim counts per definition and its queue wait lands in the right bucket, in seconds."""
        handler(claimed("send", queue_wait_ms=3, job_id=1))
        handler(claimed("send", queue_wait_ms=1_500, job_id=2))
        handler(claimed("report", queue_wait_ms=0, job_id=3))
        assert value(registry, "orchestra_jobs_claimed_total", definition="send") == 2
        assert value(registry, "orchestra_jobs_claimed_total", definition="report") == 1
        wait = "orchestra_job_queue_wait_seconds"
        assert value(registry, f"{wait}_count", definition="send") == 2
        assert value(registry, f"{wait}_sum", definition="send") == pytest.approx(1.503)
        assert value(registry, f"{wait}_bucket", definition="send", le="0.001") == 0
        assert value(registry, f"{wait}_bucket", definition="send", le="0.005") == 1
        assert value(registry, f"{wait}_bucket", definition="send", le="2.5") == 2
        assert value(registry, f"{wait}_bucket", definition="report", le="0.001") == 1

    def test_success_counts_and_observes_duration(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """A success counts per definition and its run time is observed in seconds."""
        handler(
            make(events.WorkerJobSucceeded, job_id=1, definition="send", attempt=1, duration_ms=250)
        )
        assert value(registry, "orchestra_jobs_succeeded_total", definition="send") == 1
        assert value(registry, "orchestra_job_duration_seconds_count", definition="send") == 1
        assert value(registry, "orchestra_job_duration_seconds_sum", definition="send") == 0.25
        assert (
            value(registry, "orchestra_job_duration_seconds_bucket", definition="send", le="0.1")
            == 0
        )
        assert (
            value(registry, "orchestra_job_duration_seconds_bucket", definition="send", le="0.25")
            == 1
        )

    def test_failures_split_into_retried_and_failed(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """A failure that will retry is ``retried``; a final one (payload invalid too) is ``failed``; both have a duration."""
        handler(failed(will_retry=True))
        handler(failed(will_retry=True))
        handler(failed(will_retry=False))
        handler(failed(will_retry=False, cls=events.WorkerJobPayloadInvalid, duration_ms=0))
        assert value(registry, "orchestra_jobs_retried_total", definition="send") == 2
        assert value(registry, "orchestra_jobs_failed_total", definition="send") == 2
        assert value(registry, "orchestra_job_duration_seconds_count", definition="send") == 4
        assert value(registry, "orchestra_jobs_succeeded_total", definition="send") is None

    def test_orchestrator_and_fence_counters(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Rescues, fences, orchestrator finalizations (by reason) and repeat ticks each count per definition."""
        job: dict[str, Any] = {"job_id": 9, "definition": "sync", "attempt": 2}
        handler(make(events.WorkerJobFenced, outcome="succeeded", **job))
        handler(
            make(
                events.OrchestratorJobRescued,
                "orchestrator",
                reason="worker_lost",
                locked_by=4,
                **job,
            )
        )
        handler(make(events.OrchestratorJobFinalized, "orchestrator", reason="timeout", **job))
        handler(make(events.OrchestratorJobFinalized, "orchestrator", reason="timeout", **job))
        handler(
            make(
                events.OrchestratorJobFinalized, "orchestrator", reason="unmet_dependencies", **job
            )
        )
        handler(
            make(
                events.OrchestratorJobScheduled,
                "orchestrator",
                job_id=10,
                definition="tick",
                tick_at=NOW,
            )
        )
        assert value(registry, "orchestra_jobs_fenced_total", definition="sync") == 1
        assert value(registry, "orchestra_jobs_rescued_total", definition="sync") == 1
        finalized = "orchestra_jobs_finalized_total"
        assert value(registry, finalized, definition="sync", reason="timeout") == 2
        assert value(registry, finalized, definition="sync", reason="unmet_dependencies") == 1
        assert value(registry, "orchestra_jobs_scheduled_total", definition="tick") == 1

    def test_database_errors_and_service_failures(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Database errors count per operation, failed maintenance passes per service."""
        for operation in ("claim", "claim", "heartbeat"):
            handler(
                make(events.DaemonDatabaseError, operation=operation, error="x", retry_in_ms=10)
            )
        handler(
            make(events.OrchestratorServiceFailed, "orchestrator", service="rescuer", error="x")
        )
        errors = "orchestra_daemon_database_errors_total"
        assert value(registry, errors, operation="claim") == 2
        assert value(registry, errors, operation="heartbeat") == 1
        assert (
            value(registry, "orchestra_orchestrator_service_failures_total", service="rescuer") == 1
        )

    def test_other_events_change_nothing(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Lifecycle and heartbeat events are not metrics: the exposition stays the same."""
        before = generate_latest(registry)
        handler(make(events.DaemonStarted, host="h", pid=1))
        handler(make(events.WorkerListenRestored))
        handler(make(events.OrchestratorDefinitionHeartbeat, "orchestrator", definition="send"))
        handler(make(events.DaemonStopped, error=None, handed_back=0))
        assert generate_latest(registry) == before

    def test_labels_are_bounded(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """No sample carries a job id or any label outside the documented set."""
        for job_id in range(50):
            handler(claimed(job_id=job_id))
        handler(failed(will_retry=False))
        handler(gauges((("available", "mail", 2),)))
        handler(make(events.DaemonDatabaseError, operation="finish", error="x", retry_in_ms=1))
        labels = {
            name
            for metric in registry.collect()
            for sample in metric.samples
            for name in sample.labels
        }
        assert labels <= ALLOWED_LABELS
        assert value(registry, "orchestra_jobs_claimed_total", definition="send") == 50


class TestGauges:
    def test_depth_and_daemons_are_set(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Queue depth per status and channel and live daemons per role come from OrchestratorQueueGauges."""
        handler(
            gauges(
                (("available", "mail", 7), ("running", "mail", 2), ("waiting", "mail", 0)),
                {"worker": 3, "orchestrator": 2},
            )
        )
        assert value(registry, "orchestra_jobs", status="available", channel="mail") == 7
        assert value(registry, "orchestra_jobs", status="running", channel="mail") == 2
        assert value(registry, "orchestra_jobs", status="waiting", channel="mail") == 0
        assert value(registry, "orchestra_daemons", role="worker") == 3
        assert value(registry, "orchestra_daemons", role="orchestrator") == 2

    def test_a_later_snapshot_replaces_the_last(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Values are replaced, not added, and a channel missing from the next snapshot disappears."""
        handler(gauges((("available", "mail", 7), ("available", "old", 1))))
        handler(gauges((("available", "mail", 4),), {"worker": 1, "orchestrator": 1}))
        assert value(registry, "orchestra_jobs", status="available", channel="mail") == 4
        assert value(registry, "orchestra_jobs", status="available", channel="old") is None
        assert value(registry, "orchestra_daemons", role="worker") == 1

    def test_leader_gauge_and_losing_the_lease_drops_queue_gauges(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """orchestra_leader follows the lease; a process that loses it stops exporting the queue gauges."""
        assert value(registry, "orchestra_leader") == 0
        handler(make(events.OrchestratorLeadershipAcquired, "orchestrator", lease_ms=15_000))
        assert value(registry, "orchestra_leader") == 1
        handler(gauges((("available", "mail", 7),), {"worker": 1, "orchestrator": 1}))
        handler(make(events.OrchestratorLeadershipLost, "orchestrator", reason="taken"))
        assert value(registry, "orchestra_leader") == 0
        assert value(registry, "orchestra_jobs", status="available", channel="mail") is None
        assert value(registry, "orchestra_daemons", role="worker") is None
        handler(gauges((("available", "mail", 1),)))  # leading again later: exported again
        assert value(registry, "orchestra_jobs", status="available", channel="mail") == 1

    def test_oldest_transaction_and_job_table_rows_are_set(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """The snapshot's oldest transaction age and the job table's dead and live rows become gauges."""
        handler(
            make(
                events.OrchestratorQueueGauges,
                "orchestrator",
                depth=(),
                workers={},
                oldest_transaction_age_s=312.5,
                oldest_transaction_xid_age=4_000,
                job_dead_tuples=120_000,
                job_live_tuples=900,
            )
        )
        assert value(registry, "orchestra_oldest_transaction_age_seconds") == 312.5
        assert value(registry, "orchestra_oldest_transaction_age_xids") == 4_000
        assert value(registry, "orchestra_job_table_dead_tuples") == 120_000
        assert value(registry, "orchestra_job_table_live_tuples") == 900

    def test_database_gauges_are_nan_when_unknown_or_not_leading(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Before a snapshot, for an age the role may not see, and after losing the lease, the unlabelled database gauges read NaN rather than 0."""
        names = (
            "orchestra_oldest_transaction_age_seconds",
            "orchestra_oldest_transaction_age_xids",
            "orchestra_job_table_dead_tuples",
            "orchestra_job_table_live_tuples",
        )
        assert all(math.isnan(value(registry, name) or 0.0) for name in names)
        handler(gauges((), {}))  # a snapshot without the database figures
        assert math.isnan(value(registry, "orchestra_oldest_transaction_age_seconds") or 0.0)
        handler(
            make(
                events.OrchestratorQueueGauges,
                "orchestrator",
                depth=(),
                workers={},
                oldest_transaction_age_s=1.0,
                oldest_transaction_xid_age=1,
                job_dead_tuples=1,
                job_live_tuples=1,
            )
        )
        handler(make(events.OrchestratorLeadershipLost, "orchestrator", reason="stopped"))
        assert all(math.isnan(value(registry, name) or 0.0) for name in names)


class TestHandlerSetup:
    def test_namespace_prefixes_every_name(self, registry: CollectorRegistry) -> None:
        """``namespace=`` replaces the ``orchestra`` prefix."""
        handler = PrometheusHandler(registry, namespace="billing_queue")
        handler(claimed())
        assert value(registry, "billing_queue_jobs_claimed_total", definition="send") == 1
        assert value(registry, "orchestra_jobs_claimed_total", definition="send") is None

    @pytest.mark.parametrize("namespace", ["", "1abc", "a-b", "a b"])
    def test_bad_namespace(self, registry: CollectorRegistry, namespace: str) -> None:
        """A namespace that cannot prefix a metric name raises ConfigurationError."""
        with pytest.raises(ConfigurationError) as info:
            PrometheusHandler(registry, namespace=namespace)
        assert info.value.argument == "namespace"

    def test_second_handler_on_one_registry_is_refused_cleanly(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """A second handler on the same registry raises ConfigurationError and leaves the first intact."""
        with pytest.raises(ConfigurationError, match="one PrometheusHandler per registry") as info:
            PrometheusHandler(registry)
        assert info.value.argument == "registry"
        handler(claimed())
        assert value(registry, "orchestra_jobs_claimed_total", definition="send") == 1
        PrometheusHandler(registry, namespace="other")  # a different namespace coexists

    def test_buckets_span_a_tenth_of_a_millisecond_to_an_hour(self) -> None:
        """Histogram buckets go from 100 µs to 1 h, in seconds, increasing, 1 ms among them."""
        assert DURATION_BUCKETS_S[0] == 0.0001
        assert DURATION_BUCKETS_S[-1] == 3600.0
        assert 0.001 in DURATION_BUCKETS_S
        assert list(DURATION_BUCKETS_S) == sorted(set(DURATION_BUCKETS_S))

    def test_works_as_a_daemon_event_handler(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """The handler is accepted by normalize_handlers and driven by dispatch like any other."""
        received: list[events.Event] = []
        handlers = events.normalize_handlers([received.append, handler])
        events.dispatch(handlers, claimed())
        assert len(received) == 1
        assert value(registry, "orchestra_jobs_claimed_total", definition="send") == 1

    def test_missing_prometheus_client_names_the_extra(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without prometheus-client, importing orchestra.metrics says which extra to install."""
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        monkeypatch.delitem(sys.modules, "orchestra.metrics")
        with pytest.raises(ImportError, match=r"orchestra-queue\[metrics\]"):
            importlib.import_module("orchestra.metrics")

    def test_cli_reports_the_missing_extra_as_a_usage_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``--metrics-port`` without the extra is a ConfigurationError (exit 2), not a traceback."""
        from orchestra.cli import _daemons as cli

        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        monkeypatch.delitem(sys.modules, "orchestra.metrics")
        with pytest.raises(ConfigurationError, match=r"metrics") as info:
            cli._serve_metrics(9)
        assert info.value.argument == "--metrics-port"


def test_serve_metrics_serves_the_registry(
    registry: CollectorRegistry, handler: PrometheusHandler
) -> None:
    """serve_metrics answers GET /metrics with the registry's exposition."""
    handler(claimed("served"))
    server = serve_metrics(0, "127.0.0.1", registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'orchestra_jobs_claimed_total{definition="served"} 1.0' in body


class TestLogging:
    def test_gauges_and_heartbeats_are_debug(self) -> None:
        """What an idle orchestrator emits on every pass is logged at DEBUG, so INFO stays quiet."""
        logging_handler = LoggingHandler()
        assert logging_handler.level_of(gauges((("available", "mail", 1),))) == logging.DEBUG
        heartbeat = make(events.OrchestratorDefinitionHeartbeat, "orchestrator", definition="d")
        assert logging_handler.level_of(heartbeat) == logging.DEBUG

    def test_gauges_event_serializes_as_json(self, caplog: pytest.LogCaptureFixture) -> None:
        """With the JSON formatter the snapshot becomes a list of [status, channel, count] and an object."""
        event = gauges(
            (("available", "mail", 7), ("running", "mail", 1)), {"worker": 2, "orchestrator": 1}
        )
        with caplog.at_level(logging.DEBUG, logger="orchestra.events"):
            LoggingHandler()(event)
        (record,) = [r for r in caplog.records if r.name == "orchestra.events"]
        document = json.loads(JsonFormatter().format(record))
        assert document["event"] == "OrchestratorQueueGauges"
        assert document["level"] == "debug"
        assert document["depth"] == [["available", "mail", 7], ["running", "mail", 1]]
        assert document["workers"] == {"worker": 2, "orchestrator": 1}


# -- durations finer than a millisecond -------------------------------------------------


class TestSubMillisecondDurations:
    def test_run_times_under_a_millisecond_fill_the_sub_millisecond_buckets(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """A run time given in seconds is observed as such: 300 µs lands between 250 and 500 µs."""
        handler(
            make(
                events.WorkerJobSucceeded,
                job_id=1,
                definition="tiny",
                attempt=1,
                duration_ms=0,
                duration_s=3e-4,
            )
        )
        bucket = "orchestra_job_duration_seconds_bucket"
        assert value(registry, bucket, definition="tiny", le="0.00025") == 0
        assert value(registry, bucket, definition="tiny", le="0.0005") == 1
        assert value(
            registry, "orchestra_job_duration_seconds_sum", definition="tiny"
        ) == pytest.approx(3e-4)

    def test_queue_waits_under_a_millisecond_fill_the_sub_millisecond_buckets(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """A queue wait given in seconds is observed as such: 80 µs is in the first bucket."""
        handler(
            make(
                events.WorkerJobClaimed,
                job_id=1,
                definition="tiny",
                attempt=1,
                max_attempts=1,
                queue_wait_ms=0,
                queue_wait_s=8e-5,
            )
        )
        bucket = "orchestra_job_queue_wait_seconds_bucket"
        assert value(registry, bucket, definition="tiny", le="0.0001") == 1

    def test_whole_milliseconds_are_still_seconds(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """An event with milliseconds only is observed in seconds (2 ms in the 2.5 ms bucket)."""
        handler(
            make(events.WorkerJobSucceeded, job_id=1, definition="ms", attempt=1, duration_ms=2)
        )
        bucket = "orchestra_job_duration_seconds_bucket"
        assert value(registry, bucket, definition="ms", le="0.001") == 0
        assert value(registry, bucket, definition="ms", le="0.0025") == 1


# -- renamed and new queue gauges -------------------------------------------------------


class TestQueueGauges:
    def test_daemons_replace_workers_by_role(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Live daemons are orchestra_daemons{role}; orchestra_workers is gone."""
        handler(gauges((), {"worker": 4, "orchestrator": 1}))
        assert value(registry, "orchestra_daemons", role="worker") == 4
        assert value(registry, "orchestra_daemons", role="orchestrator") == 1
        names = {sample.name for metric in registry.collect() for sample in metric.samples}
        assert not any(name.startswith("orchestra_workers") for name in names)

    def test_oldest_due_job_age_per_channel_from_the_leaders_snapshot(
        self, registry: CollectorRegistry, handler: PrometheusHandler
    ) -> None:
        """Each channel's oldest due job age is a gauge in seconds; losing the lease drops it."""
        handler(
            make(
                events.OrchestratorQueueGauges,
                "orchestrator",
                depth=(),
                workers={},
                oldest_due=(("mail", 42.5), ("report", 0.0)),
            )
        )
        age = "orchestra_oldest_due_job_age_seconds"
        assert value(registry, age, channel="mail") == 42.5
        assert value(registry, age, channel="report") == 0
        handler(make(events.OrchestratorLeadershipLost, "orchestrator", reason="taken"))
        assert value(registry, age, channel="mail") is None

    def test_queue_must_be_a_config(self, registry: CollectorRegistry) -> None:
        """queue= takes the Config of the queue; a DSN string is refused before anything else."""
        with pytest.raises(ConfigurationError) as info:
            PrometheusHandler(registry, queue="postgresql://h/db")  # type: ignore[arg-type]
        assert info.value.argument == "queue"
        assert list(registry.collect()) == []

    @pytest.mark.parametrize("argument", ["queue_cache_ms", "worker_stale_threshold_ms"])
    def test_negative_intervals_are_refused(
        self, registry: CollectorRegistry, cfg: Config, argument: str
    ) -> None:
        """The cache and the stale threshold are intervals: a negative one is refused."""
        with pytest.raises(ConfigurationError) as info:
            options: dict[str, Any] = {argument: -1}
            PrometheusHandler(registry, queue=cfg, **options)
        assert info.value.argument == argument

    def test_registering_with_a_queue_reads_nothing(
        self, registry: CollectorRegistry, cfg: Config
    ) -> None:
        """Creating the handler does not touch the database (the unit conftest refuses it)."""
        handler = PrometheusHandler(registry, queue=cfg)
        handler(claimed())  # counters work as without queue=
        assert value(registry, "orchestra_jobs_claimed_total", definition="send") == 1
        assert value(registry, "orchestra_queue_read_errors_total") == 0

    def test_a_failed_read_counts_logs_once_and_leaves_the_gauges_unknown(
        self, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unreachable database: one warning without the password, one error counted,
        no labelled queue series, NaN for the unlabelled ones; scrapes within the cache
        do not ask again."""
        queue = Config(SECRET_URI, schema="unit", connect_attempts=1)
        PrometheusHandler(registry, queue=queue, queue_cache_ms=60_000)
        with caplog.at_level(logging.WARNING, logger="orchestra.metrics"):
            for _ in range(3):
                body = generate_latest(registry).decode()
        assert value(registry, "orchestra_queue_read_errors_total") == 1
        (record,) = caplog.records
        assert "cannot read the queue gauges" in record.getMessage()
        assert SECRET not in record.getMessage() and SECRET not in body
        assert value(registry, "orchestra_jobs", status="available", channel="_default") is None
        assert math.isnan(value(registry, "orchestra_oldest_transaction_age_seconds") or 0.0)
        assert "orchestra_daemons{" not in body

    def test_the_leaders_snapshot_is_ignored_when_reading_the_queue_itself(
        self, registry: CollectorRegistry, cfg: Config
    ) -> None:
        """With queue= the gauges come from the database only, never from another source."""
        handler = PrometheusHandler(registry, queue=cfg, queue_cache_ms=60_000)
        handler(gauges((("available", "mail", 7),), {"worker": 1, "orchestrator": 1}))
        assert value(registry, "orchestra_jobs", status="available", channel="mail") is None


# -- no _created series -----------------------------------------------------------------


def test_no_series_has_a_created_sample(
    registry: CollectorRegistry, handler: PrometheusHandler
) -> None:
    """Counters and histograms export no ``_created`` sample, in either exposition format."""
    handler(claimed())
    handler(failed(will_retry=False))
    handler(make(events.DaemonDatabaseError, operation="claim", error="x", retry_in_ms=1))
    assert "_created" not in generate_latest(registry).decode()
    assert "_created" not in generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    assert value(registry, "orchestra_jobs_claimed_total", definition="send") == 1


def test_other_metrics_keep_their_created_samples(registry: CollectorRegistry) -> None:
    """Leaving out its own ``_created`` samples changes nothing for the application's metrics."""
    PrometheusHandler(registry)(claimed())
    Counter("app_orders_total", "Orders.", registry=registry).inc()
    body = generate_latest(registry).decode()
    assert "app_orders_created" in body
    assert "orchestra_jobs_claimed_created" not in body
    assert prometheus_metrics._use_created  # the process-wide switch is left alone
