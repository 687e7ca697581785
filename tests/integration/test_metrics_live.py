"""Metrics against a real PostgreSQL: a Worker and an Orchestrator feeding a PrometheusHandler,
and the gauges service's ``run_once`` on a real schema.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from orchestra import Config, JobContext, JobDefinition, Orchestrator, Worker, events
from orchestra._orchestrator._gauges import QueueGauges
from orchestra.metrics import PrometheusHandler
from orchestra.testing import EventRecorder
from tests._finished_jobs import finish_by_sql


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


def fail_first(payload: Any, ctx: JobContext) -> None:
    """Fails its first attempt, succeeds on the next."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")


def always_fail(payload: Any = None) -> None:
    """Fails every attempt."""
    raise ValueError("never works")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of ``name{labels}``, 0 when the series does not exist."""
    return registry.get_sample_value(name, labels) or 0.0


def db_now(db: psycopg.Connection[Any]) -> dt.datetime:
    """The database clock."""
    row = db.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value: dt.datetime = row[0]
    return value


class TestWorkerMetrics:
    def test_counters_and_histograms_follow_what_the_worker_did(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Claims, successes, retries, final failures, run time and queue wait, per definition."""
        registry = CollectorRegistry()
        metrics = PrometheusHandler(registry)
        recorder = EventRecorder()  # after the metrics handler: its events are already counted
        ok = JobDefinition(config, name="ok", job_function=noop)
        flaky = JobDefinition(
            config, name="flaky", job_function=fail_first, num_attempts=2, backoff="none"
        )
        bad = JobDefinition(config, name="bad", job_function=always_fail)
        late = JobDefinition(config, name="late", job_function=noop)
        ok.defer_many([{"n": n} for n in range(3)])
        flaky.defer({"n": 1})
        bad.defer({"n": 1})
        late.defer({"n": 1}, run_at=db_now(db) - dt.timedelta(seconds=40))  # waited 40 s already

        worker = Worker(
            config,
            concurrency=4,
            process_interval_ms=50,
            event_handler=[metrics, recorder],
        )
        worker.start()
        try:
            recorder.wait_for(events.WorkerJobSucceeded, count=5, timeout=30)
            recorder.wait_for(events.WorkerJobFailed, lambda e: not e.will_retry, timeout=30)
        finally:
            worker.stop()
            worker.join(timeout=30)

        expected_claims = {"ok": 3, "flaky": 2, "bad": 1, "late": 1}
        for definition, claims in expected_claims.items():
            assert sample(registry, "orchestra_jobs_claimed_total", definition=definition) == claims
            assert (
                sample(registry, "orchestra_job_queue_wait_seconds_count", definition=definition)
                == claims
            )
        assert sample(registry, "orchestra_jobs_succeeded_total", definition="ok") == 3
        assert sample(registry, "orchestra_jobs_succeeded_total", definition="flaky") == 1
        assert sample(registry, "orchestra_jobs_retried_total", definition="flaky") == 1
        assert sample(registry, "orchestra_jobs_failed_total", definition="flaky") == 0
        assert sample(registry, "orchestra_jobs_failed_total", definition="bad") == 1
        assert sample(registry, "orchestra_jobs_succeeded_total", definition="bad") == 0
        # Every finished attempt has a run time: 3 + 2 + 1 + 1.
        durations = sum(
            sample(registry, "orchestra_job_duration_seconds_count", definition=d)
            for d in expected_claims
        )
        assert durations == 7
        # Queue wait is claim time minus run_at: the late job waited about 40 s.
        wait = "orchestra_job_queue_wait_seconds"
        assert sample(registry, f"{wait}_bucket", definition="late", le="30.0") == 0
        assert sample(registry, f"{wait}_bucket", definition="late", le="60.0") == 1
        assert 40 <= sample(registry, f"{wait}_sum", definition="late") < 60
        # The others were claimed at once (NOTIFY), well under a minute.
        assert sample(registry, f"{wait}_bucket", definition="ok", le="60.0") == 3


class TestGaugesService:
    def test_run_once_counts_unfinished_jobs_per_status_and_channel(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Depth per (status, channel) with zeros for known channels; finalized jobs are not counted."""
        mail = JobDefinition(config, name="mail", job_function=noop, channel="mail")
        plain = JobDefinition(config, name="plain", job_function=noop)
        idle = JobDefinition(config, name="idle", job_function=noop, channel="idle")
        idle.upsert(db)  # a channel without any job
        first = mail.defer({"n": 1})
        mail.defer({"n": 2})
        mail.defer({"n": 3})
        plain.defer({"n": 1}, depends_on=[first])  # waiting
        done = plain.defer({"n": 2})
        claimed = db.execute(
            config.queries["job_claim"],
            {"channel": "mail", "now": None, "limit": 1, "worker_id": 1, "claim_id": "seed"},
        ).fetchall()
        assert len(claimed) == 1
        finish_by_sql(db, config, done.id, "succeeded")

        result = QueueGauges(config, interval_ms=15_000, worker_stale_threshold_ms=60_000).run_once(
            db
        )
        assert result.service == "gauges"
        (gauges,) = result.events
        assert type(gauges) is events.OrchestratorQueueGauges
        assert gauges.depth == (
            ("available", "_default", 0),
            ("available", "idle", 0),
            ("available", "mail", 2),
            ("running", "_default", 0),
            ("running", "idle", 0),
            ("running", "mail", 1),
            ("waiting", "_default", 1),
            ("waiting", "idle", 0),
            ("waiting", "mail", 0),
        )
        assert gauges.workers == {"orchestrator": 0, "worker": 0}

        # The event drives the gauges as the Orchestrator would emit it.
        registry = CollectorRegistry()
        PrometheusHandler(registry)(gauges)
        assert sample(registry, "orchestra_jobs", status="available", channel="mail") == 2
        assert sample(registry, "orchestra_jobs", status="waiting", channel="_default") == 1
        assert (
            registry.get_sample_value("orchestra_jobs", {"status": "available", "channel": "idle"})
            == 0
        )

    def test_run_once_counts_live_daemons_by_role(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A daemon is live while its heartbeat is newer than the stale threshold."""
        register = config.queries["worker_register"]
        common = {"host": "h", "pid": 1, "channel": None, "concurrency": None, "secret": "s"}
        for name, role in [("w1", "worker"), ("w2", "worker"), ("o1", "orchestrator")]:
            db.execute(register, {"name": name, "role": role, **common})
        db.execute(
            f"UPDATE \"{config.schema}\".worker SET heartbeat_at = now() - interval '10 minutes'"
            " WHERE name = 'w2'"
        )
        service = QueueGauges(config, interval_ms=15_000, worker_stale_threshold_ms=60_000)
        (gauges,) = service.run_once(db).events
        assert type(gauges) is events.OrchestratorQueueGauges
        assert gauges.workers == {"orchestrator": 1, "worker": 1}
        # Two minutes later, with no heartbeat meanwhile, none is live.
        later = db_now(db) + dt.timedelta(minutes=2)
        (gauges,) = service.run_once(db, later).events
        assert type(gauges) is events.OrchestratorQueueGauges
        assert gauges.workers == {"orchestrator": 0, "worker": 0}


class TestOrchestratorGauges:
    def test_leader_emits_gauges_and_drops_them_when_it_stops(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """A running Orchestrator feeds orchestra_jobs, orchestra_workers and orchestra_leader."""
        definition = JobDefinition(config, name="queued", job_function=noop, channel="later")
        definition.defer({"n": 1})
        definition.defer({"n": 2})
        registry = CollectorRegistry()
        orchestrator = Orchestrator(
            config,
            event_handler=[PrometheusHandler(registry), recorder],
            gauges_interval_ms=100,
            leader_lease_ms=2_000,
        )
        orchestrator.start()
        try:
            recorder.wait_for(events.OrchestratorQueueGauges, count=2, timeout=15)
            assert sample(registry, "orchestra_leader") == 1
            assert sample(registry, "orchestra_jobs", status="available", channel="later") == 2
            assert sample(registry, "orchestra_workers", role="orchestrator") == 1
        finally:
            orchestrator.stop()
            orchestrator.join(timeout=10)
        assert sample(registry, "orchestra_leader") == 0
        assert registry.get_sample_value("orchestra_workers", {"role": "orchestrator"}) is None
