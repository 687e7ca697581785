"""Prometheus metrics from orchestra's events and its queue (extra ``metrics``).

Install with ``pip install 'orchestra-queue[metrics]'`` (prometheus-client),
then hand a :class:`PrometheusHandler` to your daemons next to any other
handler, and serve the registry::

    from orchestra.metrics import PrometheusHandler, serve_metrics

    metrics = PrometheusHandler(queue=config)   # queue=: the queue gauges in this process
    serve_metrics(9100)                          # GET http://host:9100/metrics
    Worker(config, event_handler=[LoggingHandler(), metrics]).run()

``orchestra daemon --metrics-port 9100`` does the same. One handler serves
every daemon of a process; create it once per registry.

Every metric is named ``<namespace>_...`` (default ``orchestra``); labels are
bounded (definition, channel, status, role, reason, operation, service), never
job ids.

==========================================================  =========  =========================
metric                                                      type       from
==========================================================  =========  =========================
``orchestra_jobs_claimed_total{definition}``                counter    WorkerJobClaimed
``orchestra_jobs_succeeded_total{definition}``              counter    WorkerJobSucceeded
``orchestra_jobs_retried_total{definition}``                counter    WorkerJobFailed, retried
``orchestra_jobs_failed_total{definition}``                 counter    WorkerJobFailed, last
``orchestra_jobs_finalized_total{definition,reason}``       counter    OrchestratorJobFinalized
``orchestra_jobs_rescued_total{definition}``                counter    OrchestratorJobRescued
``orchestra_jobs_fenced_total{definition}``                 counter    WorkerJobFenced
``orchestra_jobs_snoozed_total{definition}``                counter    WorkerJobSnoozed
``orchestra_jobs_cancelled_total{definition}``              counter    WorkerJobCancelled
``orchestra_jobs_scheduled_total{definition}``              counter    OrchestratorJobScheduled
``orchestra_job_duration_seconds{definition}``              histogram  finished attempts
``orchestra_job_queue_wait_seconds{definition}``            histogram  claim time - run_at
``orchestra_daemon_database_errors_total{operation}``       counter    DaemonDatabaseError
``orchestra_orchestrator_service_failures_total{service}``  counter    OrchestratorServiceFailed
``orchestra_leader``                                        gauge      1 while it leads
``orchestra_jobs{status,channel}``                          gauge      the queue
``orchestra_oldest_due_job_age_seconds{channel}``           gauge      the queue
``orchestra_daemons{role}``                                 gauge      the queue
``orchestra_oldest_transaction_age_seconds``                gauge      the queue
``orchestra_oldest_transaction_age_xids``                   gauge      the queue
``orchestra_job_table_dead_tuples``                         gauge      the queue
``orchestra_job_table_live_tuples``                         gauge      the queue
``orchestra_queue_read_errors_total``                       counter    failed reads, queue=
==========================================================  =========  =========================

**The counters** count what this process's daemons did; sum them across
processes. ``claimed`` counts attempts (a retry is claimed again).
``succeeded`` and ``failed`` count jobs that a worker finished for good;
``retried`` counts failed attempts after which the job runs again.
``finalized`` counts the jobs the orchestrator failed for good, never a
worker: ``timeout``, ``no_attempts_remaining`` (its last attempt was lost: the
worker died or its lease ran out) and ``unmet_dependencies``. Every job that
fails for good is counted once, in ``failed`` or in ``finalized``: add them for
all final failures. ``rescued`` counts lost attempts whose job runs again.
``snoozed`` counts runs that snoozed (they spent no attempt; ``claimed``
counts them). ``cancelled`` counts running attempts that a worker stopped
because their job was cancelled; jobs cancelled before they ran, or deleted,
through the management API are not counted.

**The histograms** are in seconds, with buckets from 100 µs to 1 h
(:data:`DURATION_BUCKETS_S`).

**The queue gauges** describe the database, not the process. With
``queue=config`` the handler reads them from the database when it is scraped
(one statement plus the vacuum probe, at most once per ``queue_cache_ms``:
scrapes in between get the last reading), in any process: a deployment of
workers alone has them too. Every process given ``queue=`` exports the same
values, so aggregate them with ``max``, not ``sum``, or give it to one process.
Without ``queue=`` they come from the leading orchestrator's
``OrchestratorQueueGauges`` events (every ``gauges_interval_ms``): only the
leader's process exports them, and a process that loses the lease drops them.

``orchestra_jobs`` holds unfinished jobs only (``waiting``, ``available``,
``running``). ``orchestra_oldest_due_job_age_seconds`` is how long the oldest
available job of a channel whose ``run_at`` has passed has been waiting (0
when none is due): the number to alert on when a channel falls behind.
``orchestra_daemons`` counts the daemons whose heartbeat is newer than the
stale threshold, by role (``worker``, ``orchestrator``).
``oldest_transaction_age_seconds`` is how long the transaction holding the
oldest snapshot on the queue's database has been open (0 when none): while it
is, autovacuum cannot remove dead job rows, and ``job_table_dead_tuples``
grows. It is NaN when the reading role may not see that session's start (grant
it ``pg_monitor``) or the holder is a replication slot;
``oldest_transaction_age_xids`` (transaction ids since that snapshot) is always
known. These four have no labels: they read NaN while there is no reading (a
process that does not lead, or a failed read), the labelled ones are absent.

No series has a ``_created`` sample: the handler leaves them out of its own
metrics only, without ``prometheus_client.disable_created_metrics()``, which
would switch them off for every metric of the process.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

import attrs

from orchestra import _db, events
from orchestra._checks import milliseconds
from orchestra._config import Config
from orchestra._orchestrator._gauges import QueueSnapshot, read_queue_snapshot
from orchestra.errors import ConfigurationError

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.metrics_core import GaugeMetricFamily, Metric
except ImportError as exc:
    raise ImportError(
        "orchestra.metrics needs prometheus-client: install the 'metrics' extra, "
        "pip install 'orchestra-queue[metrics]'",
        name=exc.name,
    ) from exc

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["DURATION_BUCKETS_S", "PrometheusHandler", "serve_metrics"]

#: Buckets of both histograms, in seconds: 100 µs to 1 h. A job that does
#: little runs, and a job claimed the moment it was deferred waits, well under
#: a millisecond.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

#: How long one reading of the queue (``queue=``) serves scrapes: several
#: Prometheus servers, or a scrape retried, read the database once.
QUEUE_CACHE_MS_DEFAULT = 5_000
#: A reading of the queue is cancelled past this (statement_timeout), below
#: Prometheus's default scrape timeout of 10 s: a scrape then shows the queue
#: gauges as unknown rather than timing out whole.
QUEUE_READ_TIMEOUT_MS = 5_000
#: The orchestrator's default: a daemon silent this long is not counted live.
WORKER_STALE_THRESHOLD_MS_DEFAULT = 60_000

_M = TypeVar("_M", bound=MetricWrapperBase)
_NAMESPACE_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

logger = logging.getLogger("orchestra.metrics")


@attrs.frozen
class _QueueReading:
    """One reading of the queue gauges, from an event or from the database."""

    depth: tuple[tuple[str, str, int], ...] = ()
    oldest_due: tuple[tuple[str, float], ...] = ()
    daemons: Mapping[str, int] = attrs.field(factory=dict)
    oldest_transaction_age_s: float | None = None
    oldest_transaction_xid_age: int | None = None
    job_dead_tuples: int | None = None
    job_live_tuples: int | None = None

    @classmethod
    def from_event(cls, event: events.OrchestratorQueueGauges) -> _QueueReading:
        """The leader's snapshot."""
        return cls(
            depth=event.depth,
            oldest_due=event.oldest_due,
            daemons=event.workers,
            oldest_transaction_age_s=event.oldest_transaction_age_s,
            oldest_transaction_xid_age=event.oldest_transaction_xid_age,
            job_dead_tuples=event.job_dead_tuples,
            job_live_tuples=event.job_live_tuples,
        )

    @classmethod
    def from_snapshot(cls, snapshot: QueueSnapshot) -> _QueueReading:
        """A reading of the database."""
        horizon = snapshot.horizon
        return cls(
            depth=snapshot.depth,
            oldest_due=snapshot.oldest_due,
            daemons=snapshot.daemons,
            oldest_transaction_age_s=horizon.oldest_age_s,
            oldest_transaction_xid_age=0 if horizon.oldest is None else horizon.oldest.xid_age,
            job_dead_tuples=horizon.job_dead_tuples,
            job_live_tuples=horizon.job_live_tuples,
        )


class _QueueGauges:
    """The queue gauges, built at each scrape from the latest reading."""

    def __init__(self, namespace: str, read: Callable[[], _QueueReading | None]) -> None:
        self._namespace = namespace
        self._read = read

    def describe(self) -> list[Metric]:
        """The families without samples (what a registry checks names against)."""
        return self._families(None)

    def collect(self) -> list[Metric]:
        """The families of the latest reading."""
        return self._families(self._read())

    def _families(self, reading: _QueueReading | None) -> list[Metric]:
        ns = self._namespace
        jobs = GaugeMetricFamily(
            f"{ns}_jobs",
            "Unfinished jobs by status and channel (available: due now; scheduled: run_at ahead).",
            labels=("status", "channel"),
        )
        oldest_due = GaugeMetricFamily(
            f"{ns}_oldest_due_job_age_seconds",
            "Time since the run_at of the channel's oldest available job that is due "
            "(0: none is due).",
            labels=("channel",),
        )
        daemons = GaugeMetricFamily(
            f"{ns}_daemons",
            "Live daemons by role (heartbeat within the stale threshold).",
            labels=("role",),
        )
        if reading is not None:
            for status, channel, count in reading.depth:
                jobs.add_metric((status, channel), count)
            for channel, age_s in reading.oldest_due:
                oldest_due.add_metric((channel,), age_s)
            for role, count in sorted(reading.daemons.items()):
                daemons.add_metric((role,), count)
        unlabelled = (
            (
                "oldest_transaction_age_seconds",
                "Age of the transaction holding the oldest snapshot on the queue's database "
                "(0: none; NaN: not visible to this role, grant pg_monitor).",
                None if reading is None else reading.oldest_transaction_age_s,
            ),
            (
                "oldest_transaction_age_xids",
                "Transaction ids consumed since the oldest snapshot on the queue's database "
                "was taken.",
                None if reading is None else reading.oldest_transaction_xid_age,
            ),
            (
                "job_table_dead_tuples",
                "Dead rows of the job table not yet removed by vacuum.",
                None if reading is None else reading.job_dead_tuples,
            ),
            (
                "job_table_live_tuples",
                "Live rows of the job table.",
                None if reading is None else reading.job_live_tuples,
            ),
        )
        families: list[Metric] = [jobs, oldest_due, daemons]
        for name, documentation, value in unlabelled:
            # NaN rather than a stale or invented figure when it is not known.
            families.append(
                GaugeMetricFamily(
                    f"{ns}_{name}", documentation, value=math.nan if value is None else value
                )
            )
        return families


class _DatabaseReader:
    """Reads the queue when scraped, at most once per ``cache_s``; a failed read counts."""

    def __init__(
        self, config: Config, *, cache_s: float, stale_threshold_ms: int, errors: Counter
    ) -> None:
        self._config = config
        self._cache_s = cache_s
        self._stale_threshold_ms = stale_threshold_ms
        self._errors = errors
        # Concurrent scrapes wait for one read rather than each running one.
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._reading: _QueueReading | None = None

    def __call__(self) -> _QueueReading | None:
        with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self._cache_s:
                return self._reading
            try:
                self._reading = self._read()
            except Exception as exc:  # any failure: the database, the pool, the network
                self._errors.inc()
                self._reading = None
                logger.warning(
                    "cannot read the queue gauges (they read as unknown until the next "
                    "reading): %s",
                    _db.redact(f"{type(exc).__name__}: {exc}"),
                )
            # A failure is kept as long as a reading: a database that is down
            # is not asked again at every scrape.
            self._read_at = time.monotonic()
            return self._reading

    def _read(self) -> _QueueReading:
        with self._config.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [str(QUEUE_READ_TIMEOUT_MS)]
            )
            snapshot = read_queue_snapshot(
                conn, self._config, worker_stale_threshold_ms=self._stale_threshold_ms
            )
        return _QueueReading.from_snapshot(snapshot)


class _Exposition:
    """Everything the handler exports, registered once: its metrics and the queue gauges.

    The ``_created`` samples of its counters and histograms are left out.
    """

    def __init__(self, metrics: Iterable[MetricWrapperBase], queue: _QueueGauges) -> None:
        self._metrics = tuple(metrics)
        self._queue = queue

    def describe(self) -> list[Metric]:
        """What a registry checks for duplicated names; reads nothing."""
        described = [family for metric in self._metrics for family in metric.describe()]
        return described + self._queue.describe()

    def collect(self) -> Iterator[Metric]:
        """Every family, without ``_created`` samples."""
        for metric in self._metrics:
            for family in metric.collect():
                created = f"{family.name}_created"
                family.samples = [sample for sample in family.samples if sample.name != created]
                yield family
        yield from self._queue.collect()


def _seconds(precise: float | None, milliseconds_: int) -> float:
    """A duration in seconds: the precise one when the event has it, else its milliseconds."""
    return max(0.0, precise) if precise is not None else milliseconds_ / 1000


class PrometheusHandler:
    """An event handler that keeps Prometheus counters, histograms and gauges.

    Args:
        registry: where the metrics are registered; default the global
            ``prometheus_client.REGISTRY`` (what :func:`serve_metrics` serves).
        namespace: prefix of every metric name.
        queue: the Config of the queue whose gauges (depth, oldest due job,
            live daemons, vacuum) this process reads from the database when
            scraped. None: the leading orchestrator's events feed them, in its
            process only.
        queue_cache_ms: how long one reading of the queue serves scrapes.
        worker_stale_threshold_ms: a daemon whose heartbeat is older is not
            counted in ``orchestra_daemons`` (with ``queue``; set it like the
            orchestrator's).

    Raises:
        ConfigurationError: the namespace is not a valid metric name prefix, an
            option is out of range, or the registry already holds these metrics
            (create one handler per registry and give it to every daemon of the
            process).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "orchestra",
        queue: Config | None = None,
        queue_cache_ms: int = QUEUE_CACHE_MS_DEFAULT,
        worker_stale_threshold_ms: int = WORKER_STALE_THRESHOLD_MS_DEFAULT,
    ) -> None:
        if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
            raise ConfigurationError(
                "namespace", f"must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}"
            )
        if queue is not None and not isinstance(queue, Config):
            raise ConfigurationError("queue", f"must be an orchestra Config or None, not {queue!r}")
        cache_ms = milliseconds(queue_cache_ms, "queue_cache_ms")
        stale_ms = milliseconds(worker_stale_threshold_ms, "worker_stale_threshold_ms")
        assert cache_ms is not None and stale_ms is not None
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.namespace = namespace
        self.queue = queue
        self._lock = threading.Lock()
        self._leader_reading: _QueueReading | None = None
        self._metrics: list[MetricWrapperBase] = []
        self._create_metrics()
        read: Callable[[], _QueueReading | None] = self._reading_of_the_leader
        if queue is not None:
            self.queue_read_errors = self._counter(
                "queue_read_errors_total", "Readings of the queue gauges that failed."
            )
            read = _DatabaseReader(
                queue,
                cache_s=cache_ms / 1000,
                stale_threshold_ms=stale_ms,
                errors=self.queue_read_errors,
            )
        try:
            self.registry.register(_Exposition(self._metrics, _QueueGauges(namespace, read)))
        except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
            raise ConfigurationError(
                "registry",
                f"it already holds {namespace}_* metrics ({exc}); create one PrometheusHandler "
                "per registry and give it to every daemon, or pass registry=CollectorRegistry()",
            ) from None

    def _add(self, metric: _M) -> _M:
        self._metrics.append(metric)
        return metric

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        # Registered through _Exposition, which leaves out the _created samples.
        return self._add(
            Counter(name, documentation, labels, namespace=self.namespace, registry=None)
        )

    def _histogram(self, name: str, documentation: str) -> Histogram:
        return self._add(
            Histogram(
                name,
                documentation,
                ("definition",),
                namespace=self.namespace,
                registry=None,
                buckets=DURATION_BUCKETS_S,
            )
        )

    def _create_metrics(self) -> None:
        self.jobs_claimed = self._counter(
            "jobs_claimed_total",
            "Attempts started by this process's workers (a retried job is claimed again).",
            "definition",
        )
        self.jobs_succeeded = self._counter(
            "jobs_succeeded_total", "Jobs finished as succeeded by a worker.", "definition"
        )
        self.jobs_retried = self._counter(
            "jobs_retried_total",
            "Failed attempts after which the job runs again (a worker's).",
            "definition",
        )
        self.jobs_failed = self._counter(
            "jobs_failed_total",
            "Jobs failed for good by a worker: their last attempt failed.",
            "definition",
        )
        self.jobs_finalized = self._counter(
            "jobs_finalized_total",
            "Jobs failed for good by the orchestrator, never by a worker (reason: timeout, "
            "no_attempts_remaining, unmet_dependencies).",
            "definition",
            "reason",
        )
        self.jobs_rescued = self._counter(
            "jobs_rescued_total",
            "Lost attempts (worker gone, lease expired) whose job runs again (orchestrator).",
            "definition",
        )
        self.jobs_fenced = self._counter(
            "jobs_fenced_total",
            "Finishes refused because the attempt no longer owned its job.",
            "definition",
        )
        self.jobs_snoozed = self._counter(
            "jobs_snoozed_total",
            "Runs whose job function snoozed: the job runs again later, no attempt spent.",
            "definition",
        )
        self.jobs_cancelled = self._counter(
            "jobs_cancelled_total",
            "Running attempts stopped by a worker because their job was cancelled.",
            "definition",
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
        self.leader = self._add(
            Gauge(
                "leader",
                "1 while an orchestrator of this process holds the leader lease.",
                namespace=self.namespace,
                registry=None,
            )
        )
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
                self.job_queue_wait.labels(event.definition).observe(
                    _seconds(event.queue_wait_s, event.queue_wait_ms)
                )
            case events.WorkerJobSucceeded():
                self.jobs_succeeded.labels(event.definition).inc()
                self.job_duration.labels(event.definition).observe(
                    _seconds(event.duration_s, event.duration_ms)
                )
            case events.WorkerJobFailed():  # WorkerJobPayloadInvalid too
                counter = self.jobs_retried if event.will_retry else self.jobs_failed
                counter.labels(event.definition).inc()
                self.job_duration.labels(event.definition).observe(
                    _seconds(event.duration_s, event.duration_ms)
                )
            case events.WorkerJobFenced():
                self.jobs_fenced.labels(event.definition).inc()
            case events.WorkerJobSnoozed():
                self.jobs_snoozed.labels(event.definition).inc()
            case events.WorkerJobCancelled():
                self.jobs_cancelled.labels(event.definition).inc()
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
            case events.OrchestratorQueueGauges() if self.queue is None:
                with self._lock:
                    self._leader_reading = _QueueReading.from_event(event)
            case events.OrchestratorLeadershipAcquired():
                self.leader.set(1)
            case events.OrchestratorLeadershipLost():
                self.leader.set(0)
                with self._lock:  # only the leader exports the queue gauges
                    self._leader_reading = None

    def _reading_of_the_leader(self) -> _QueueReading | None:
        with self._lock:
            return self._leader_reading


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
