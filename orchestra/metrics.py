"""Prometheus metrics from orchestra's events (extra ``metrics``).

Install with ``pip install 'orchestra-queue[metrics]'`` (prometheus-client),
then hand a :class:`PrometheusHandler` to your daemons next to any other
handler, and serve the registry::

    from orchestra.metrics import PrometheusHandler, serve_metrics

    metrics = PrometheusHandler()
    serve_metrics(9100)                     # GET http://host:9100/metrics
    Worker(config, event_handler=[LoggingHandler(), metrics]).run()

``orchestra daemon --metrics-port 9100`` does the same. One handler serves
every daemon of a process; create it once per registry.

Every metric is named ``<namespace>_...`` (default ``orchestra``); labels are
bounded (definition, channel, status, role, reason, operation, service), never
job ids.

==========================================================  =========  =============================
metric                                                      type       from
==========================================================  =========  =============================
``orchestra_jobs_claimed_total{definition}``                counter    WorkerJobClaimed
``orchestra_jobs_succeeded_total{definition}``              counter    WorkerJobSucceeded
``orchestra_jobs_failed_total{definition}``                 counter    WorkerJobFailed, last attempt
``orchestra_jobs_retried_total{definition}``                counter    WorkerJobFailed, will retry
``orchestra_jobs_rescued_total{definition}``                counter    OrchestratorJobRescued
``orchestra_jobs_fenced_total{definition}``                 counter    WorkerJobFenced
``orchestra_jobs_finalized_total{definition,reason}``       counter    OrchestratorJobFinalized
``orchestra_jobs_scheduled_total{definition}``              counter    OrchestratorJobScheduled
``orchestra_job_duration_seconds{definition}``              histogram  attempts that finished
``orchestra_job_queue_wait_seconds{definition}``            histogram  claim time minus run_at
``orchestra_jobs{status,channel}``                          gauge      OrchestratorQueueGauges
``orchestra_workers{role}``                                 gauge      OrchestratorQueueGauges
``orchestra_oldest_transaction_age_seconds``                gauge      OrchestratorQueueGauges
``orchestra_oldest_transaction_age_xids``                   gauge      OrchestratorQueueGauges
``orchestra_job_table_dead_tuples``                         gauge      OrchestratorQueueGauges
``orchestra_job_table_live_tuples``                         gauge      OrchestratorQueueGauges
``orchestra_leader``                                        gauge      1 while this process leads
``orchestra_daemon_database_errors_total{operation}``       counter    DaemonDatabaseError
``orchestra_orchestrator_service_failures_total{service}``  counter    OrchestratorServiceFailed
==========================================================  =========  =============================

Jobs that fail for good are ``failed_total`` (the worker's last attempt) plus
``finalized_total`` (the orchestrator: timeout, no_attempts_remaining after a
rescue, unmet_dependencies). The gauges hold unfinished jobs only (``waiting``,
``available``, ``running``) and are refreshed by the leading orchestrator every
``gauges_interval_ms`` (15 s): only the leader's process exports them, so sums
across processes do not double count; a process that loses the lease drops them.

``oldest_transaction_age_seconds`` is how long the transaction holding the
oldest snapshot on the queue's database has been open (0 when none): while it
is, autovacuum cannot remove dead job rows, and ``job_table_dead_tuples`` grows.
It is NaN when the orchestrator's role may not see that session's start (grant
it ``pg_monitor``) or the holder is a replication slot;
``oldest_transaction_age_xids`` (transaction ids since that snapshot) is always
known. These four gauges have no labels, so a process that does not lead
exports them as NaN.
"""

from __future__ import annotations

import math
import re
import threading
from typing import TYPE_CHECKING, Any

from orchestra import events
from orchestra.errors import ConfigurationError

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:
    raise ImportError(
        "orchestra.metrics needs prometheus-client: install the 'metrics' extra, "
        "pip install 'orchestra-queue[metrics]'",
        name=exc.name,
    ) from exc

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["DURATION_BUCKETS_S", "PrometheusHandler", "serve_metrics"]

#: Buckets of both histograms, in seconds: 1 ms to 1 h.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

_NAMESPACE_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class PrometheusHandler:
    """An event handler that keeps Prometheus counters, histograms and gauges.

    Args:
        registry: where the metrics are registered; default the global
            ``prometheus_client.REGISTRY`` (what :func:`serve_metrics` serves).
        namespace: prefix of every metric name.

    Raises:
        ConfigurationError: the namespace is not a valid metric name prefix, or
            the registry already holds these metrics (create one handler per
            registry and give it to every daemon of the process).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "orchestra"
    ) -> None:
        if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
            raise ConfigurationError(
                "namespace", f"must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}"
            )
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.namespace = namespace
        self._lock = threading.Lock()
        self._depth_labels: set[tuple[str, str]] = set()
        self._created: list[Any] = []
        try:
            self._create_metrics()
        except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
            for collector in self._created:
                self.registry.unregister(collector)
            raise ConfigurationError(
                "registry",
                f"it already holds {namespace}_* metrics ({exc}); create one PrometheusHandler "
                "per registry and give it to every daemon, or pass registry=CollectorRegistry()",
            ) from None

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        metric = Counter(
            name, documentation, labels, namespace=self.namespace, registry=self.registry
        )
        self._created.append(metric)
        return metric

    def _histogram(self, name: str, documentation: str) -> Histogram:
        metric = Histogram(
            name,
            documentation,
            ("definition",),
            namespace=self.namespace,
            registry=self.registry,
            buckets=DURATION_BUCKETS_S,
        )
        self._created.append(metric)
        return metric

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        metric = Gauge(
            name, documentation, labels, namespace=self.namespace, registry=self.registry
        )
        self._created.append(metric)
        return metric

    def _create_metrics(self) -> None:
        self.jobs_claimed = self._counter(
            "jobs_claimed_total", "Jobs claimed by workers (one per attempt).", "definition"
        )
        self.jobs_succeeded = self._counter(
            "jobs_succeeded_total", "Jobs finalized as succeeded by a worker.", "definition"
        )
        self.jobs_failed = self._counter(
            "jobs_failed_total",
            "Jobs whose last attempt failed in a worker (finalized as failed).",
            "definition",
        )
        self.jobs_retried = self._counter(
            "jobs_retried_total", "Failed attempts that will be retried.", "definition"
        )
        self.jobs_rescued = self._counter(
            "jobs_rescued_total",
            "Running jobs of dead workers or expired leases made available again.",
            "definition",
        )
        self.jobs_fenced = self._counter(
            "jobs_fenced_total",
            "Finishes refused because the attempt no longer owned its job.",
            "definition",
        )
        self.jobs_finalized = self._counter(
            "jobs_finalized_total",
            "Jobs failed by the orchestrator (timeout, no_attempts_remaining, unmet_dependencies).",
            "definition",
            "reason",
        )
        self.jobs_scheduled = self._counter(
            "jobs_scheduled_total", "Jobs enqueued by repeat or cron ticks.", "definition"
        )
        self.job_duration = self._histogram(
            "job_duration_seconds", "Run time of finished attempts (succeeded or failed)."
        )
        self.job_queue_wait = self._histogram(
            "job_queue_wait_seconds", "Claim time minus the time the job became runnable."
        )
        self.jobs = self._gauge(
            "jobs",
            "Unfinished jobs by status and channel (refreshed by the leading orchestrator).",
            "status",
            "channel",
        )
        self.workers = self._gauge(
            "workers",
            "Live daemons by role, heartbeat within the stale threshold (leading orchestrator).",
            "role",
        )
        self.leader = self._gauge(
            "leader", "1 while an orchestrator of this process holds the leader lease."
        )
        self.oldest_transaction_age = self._gauge(
            "oldest_transaction_age_seconds",
            "Age of the transaction holding the oldest snapshot on the queue's database "
            "(0: none; NaN: not visible to this role, grant pg_monitor) (leading orchestrator).",
        )
        self.oldest_transaction_xids = self._gauge(
            "oldest_transaction_age_xids",
            "Transaction ids consumed since the oldest snapshot on the queue's database was "
            "taken (leading orchestrator).",
        )
        self.job_dead_tuples = self._gauge(
            "job_table_dead_tuples",
            "Dead rows of the job table not yet removed by vacuum (leading orchestrator).",
        )
        self.job_live_tuples = self._gauge(
            "job_table_live_tuples", "Live rows of the job table (leading orchestrator)."
        )
        self._database_gauges = (
            self.oldest_transaction_age,
            self.oldest_transaction_xids,
            self.job_dead_tuples,
            self.job_live_tuples,
        )
        for gauge in self._database_gauges:
            gauge.set(math.nan)  # unlabelled: NaN, not 0, until a leader measures them
        self.database_errors = self._counter(
            "daemon_database_errors_total",
            "Failed database operations of the daemons (retried).",
            "operation",
        )
        self.service_failures = self._counter(
            "orchestrator_service_failures_total",
            "Maintenance passes that raised (retried at the next interval).",
            "service",
        )

    def __call__(self, event: events.Event) -> None:
        match event:
            case events.WorkerJobClaimed():
                self.jobs_claimed.labels(event.definition).inc()
                self.job_queue_wait.labels(event.definition).observe(event.queue_wait_ms / 1000)
            case events.WorkerJobSucceeded():
                self.jobs_succeeded.labels(event.definition).inc()
                self.job_duration.labels(event.definition).observe(event.duration_ms / 1000)
            case events.WorkerJobFailed():  # WorkerJobPayloadInvalid too
                counter = self.jobs_retried if event.will_retry else self.jobs_failed
                counter.labels(event.definition).inc()
                self.job_duration.labels(event.definition).observe(event.duration_ms / 1000)
            case events.WorkerJobFenced():
                self.jobs_fenced.labels(event.definition).inc()
            case events.OrchestratorJobRescued():
                self.jobs_rescued.labels(event.definition).inc()
            case events.OrchestratorJobFinalized():
                self.jobs_finalized.labels(event.definition, event.reason).inc()
            case events.OrchestratorJobScheduled():
                self.jobs_scheduled.labels(event.definition).inc()
            case events.DaemonDatabaseError():
                self.database_errors.labels(event.operation).inc()
            case events.OrchestratorServiceFailed():
                self.service_failures.labels(event.service).inc()
            case events.OrchestratorQueueGauges():
                self._refresh_gauges(event)
            case events.OrchestratorLeadershipAcquired():
                self.leader.set(1)
            case events.OrchestratorLeadershipLost():
                self.leader.set(0)
                self._drop_gauges()

    def _refresh_gauges(self, event: events.OrchestratorQueueGauges) -> None:
        with self._lock:
            seen: set[tuple[str, str]] = set()
            for status, channel, count in event.depth:
                self.jobs.labels(status, channel).set(count)
                seen.add((status, channel))
            for labels in self._depth_labels - seen:  # a channel that is gone
                self.jobs.remove(*labels)
            self._depth_labels = seen
            for role, count in event.workers.items():
                self.workers.labels(role).set(count)
            for gauge, value in (
                (self.oldest_transaction_age, event.oldest_transaction_age_s),
                (self.oldest_transaction_xids, event.oldest_transaction_xid_age),
                (self.job_dead_tuples, event.job_dead_tuples),
                (self.job_live_tuples, event.job_live_tuples),
            ):
                # NaN rather than a stale or invented figure when it is not known.
                gauge.set(math.nan if value is None else value)

    def _drop_gauges(self) -> None:
        """Only the leader exports the queue gauges."""
        with self._lock:
            self.jobs.clear()
            self.workers.clear()
            self._depth_labels = set()
            for gauge in self._database_gauges:
                gauge.set(math.nan)


def serve_metrics(
    port: int,
    addr: str = "0.0.0.0",  # noqa: S104 (Prometheus scrapes from another host)
    registry: CollectorRegistry | None = None,
) -> WSGIServer:
    """Serve ``registry`` (default the global one) over HTTP, in a daemon thread.

    Every path answers with the metrics; ``/metrics`` is the usual one. Port 0
    picks a free port (``server.server_port``). Returns the server:
    ``server.shutdown()`` then ``server.server_close()`` stop it.

    Raises:
        OSError: the address cannot be bound (port in use, no permission).
    """
    server, _thread = prometheus_client.start_http_server(
        port, addr, registry=prometheus_client.REGISTRY if registry is None else registry
    )
    return server
