"""Metrics against a real PostgreSQL: a Worker and an Orchestrator feeding a PrometheusHandler,
the gauges service's ``run_once`` on a real schema, the oldest due job per channel, and a
handler that reads the queue gauges itself when scraped.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from orchestra import Config, JobContext, JobDefinition, Orchestrator, Worker, events
from orchestra._orchestrator._gauges import QueueGauges, read_queue_snapshot
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
            {"channels": ["mail"], "now": None, "limit": 1, "worker_id": 1, "claim_id": "seed"},
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
            ("scheduled", "_default", 0),
            ("scheduled", "idle", 0),
            ("scheduled", "mail", 0),
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
        common = {"host": "h", "pid": 1, "channels": None, "concurrency": None, "secret": "s"}
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
        """A running Orchestrator feeds orchestra_jobs, orchestra_daemons and orchestra_leader."""
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
            assert sample(registry, "orchestra_daemons", role="orchestrator") == 1
        finally:
            orchestrator.stop()
            orchestrator.join(timeout=10)
        assert sample(registry, "orchestra_leader") == 0
        assert registry.get_sample_value("orchestra_daemons", {"role": "orchestrator"}) is None


class TestOldestDueJob:
    def test_snapshot_has_each_channels_oldest_due_job_age(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Per channel: now minus the oldest run_at among available jobs already due; 0 when
        none is due (only future, running or waiting jobs, or no job at all)."""
        now = db_now(db)
        mail = JobDefinition(config, name="mail", job_function=noop, channel="mail")
        later = JobDefinition(config, name="later", job_function=noop, channel="later")
        busy = JobDefinition(config, name="busy", job_function=noop, channel="busy")
        idle = JobDefinition(config, name="idle", job_function=noop, channel="idle")
        idle.upsert(db)
        mail.defer({"n": 1}, run_at=now - dt.timedelta(seconds=40))
        mail.defer({"n": 2}, run_at=now - dt.timedelta(seconds=5))
        mail.defer({"n": 3}, run_at=now + dt.timedelta(hours=1))
        later.defer({"n": 1}, run_at=now + dt.timedelta(minutes=5))
        first = busy.defer({"n": 1}, run_at=now - dt.timedelta(minutes=10))
        busy.defer({"n": 2}, depends_on=[first])  # waiting
        claimed = db.execute(
            config.queries["job_claim"],
            {"channels": ["busy"], "now": None, "limit": 1, "worker_id": 1, "claim_id": "seed"},
        ).fetchall()
        assert len(claimed) == 1  # running now: not waiting for a worker any more

        snapshot = read_queue_snapshot(db, config, worker_stale_threshold_ms=60_000, now=now)
        oldest_due = dict(snapshot.oldest_due)
        assert oldest_due["mail"] == pytest.approx(40.0, abs=0.001)
        assert oldest_due["later"] == 0.0
        assert oldest_due["busy"] == 0.0
        assert oldest_due["idle"] == 0.0
        assert [channel for channel, _ in snapshot.oldest_due] == sorted(oldest_due)
        # The counts of the same statement: the job an hour ahead is scheduled.
        assert ("available", "mail", 2) in snapshot.depth
        assert ("scheduled", "mail", 1) in snapshot.depth
        assert ("scheduled", "later", 1) in snapshot.depth
        assert ("waiting", "busy", 1) in snapshot.depth

    def test_the_age_grows_with_the_clock(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Read a minute later, the same job is a minute older; a future job becomes due."""
        now = db_now(db)
        mail = JobDefinition(config, name="mail", job_function=noop, channel="mail")
        mail.defer({"n": 1}, run_at=now + dt.timedelta(seconds=30))
        read = functools.partial(read_queue_snapshot, db, config, worker_stale_threshold_ms=1)
        assert dict(read(now=now).oldest_due)["mail"] == 0.0
        later = now + dt.timedelta(minutes=1)
        assert dict(read(now=later).oldest_due)["mail"] == pytest.approx(30.0, abs=0.001)


class TestQueueReadAtScrape:
    def test_a_deployment_of_workers_alone_exports_the_queue_gauges(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """No orchestrator anywhere: a worker's handler given the queue reads depth, oldest due
        job and live daemons from the database when scraped."""
        backlog = JobDefinition(config, name="backlog", job_function=noop, channel="backlog")
        backlog.defer_many([{"n": n} for n in range(3)])
        backlog.defer({"n": 9}, run_at=db_now(db) - dt.timedelta(seconds=90))
        registry = CollectorRegistry()
        recorder = EventRecorder()
        metrics = PrometheusHandler(registry, queue=config, queue_cache_ms=0)
        # It serves channel "_default" only: the backlog stays.
        worker = Worker(config, process_interval_ms=50, event_handler=[metrics, recorder])
        worker.start()
        try:
            recorder.wait_for(events.DaemonStarted, timeout=30)
            assert sample(registry, "orchestra_jobs", status="available", channel="backlog") == 4
            assert sample(registry, "orchestra_jobs", status="running", channel="backlog") == 0
            age = sample(registry, "orchestra_oldest_due_job_age_seconds", channel="backlog")
            assert 90 <= age < 600
            assert sample(registry, "orchestra_daemons", role="worker") == 1
            assert sample(registry, "orchestra_daemons", role="orchestrator") == 0
            assert sample(registry, "orchestra_leader") == 0
            live_rows = registry.get_sample_value("orchestra_job_table_live_tuples")
            assert live_rows is not None  # a number once PostgreSQL has statistics, else NaN
            assert sample(registry, "orchestra_queue_read_errors_total") == 0
        finally:
            worker.stop()
            worker.join(timeout=30)

    def test_scrapes_within_the_cache_share_one_reading(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A second scrape inside queue_cache_ms shows the first reading; without a cache it
        shows the jobs deferred meanwhile."""
        backlog = JobDefinition(config, name="backlog", job_function=noop, channel="backlog")
        backlog.defer({"n": 1})
        cached = CollectorRegistry()
        PrometheusHandler(cached, queue=config, queue_cache_ms=3_600_000)
        fresh = CollectorRegistry()
        PrometheusHandler(fresh, queue=config, queue_cache_ms=0)
        labels = {"status": "available", "channel": "backlog"}
        assert cached.get_sample_value("orchestra_jobs", labels) == 1
        assert fresh.get_sample_value("orchestra_jobs", labels) == 1
        backlog.defer({"n": 2})
        assert cached.get_sample_value("orchestra_jobs", labels) == 1
        assert fresh.get_sample_value("orchestra_jobs", labels) == 2
