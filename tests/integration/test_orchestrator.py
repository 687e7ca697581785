"""Orchestrator services against a real PostgreSQL, driven by ``run_once(conn, now)``.

Time is passed explicitly as ``now``, so hour-long thresholds pass in
milliseconds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import attrs
import psycopg
import pytest

from orchestra import Config, JobDefinition, Orchestrator, Worker, events
from orchestra._orchestrator._finalizer import Finalizer
from orchestra._orchestrator._heartbeat import DefinitionHeartbeat
from orchestra._orchestrator._leader import Elector
from orchestra._orchestrator._rescuer import Rescuer
from orchestra._orchestrator._scheduler import RepeatScheduler, cron_ticks, interval_ticks
from orchestra._orchestrator._service import RunResult
from orchestra._orchestrator._sweeper import Sweeper
from orchestra.errors import ConfigurationError
from orchestra.testing import EventRecorder, wait_until
from tests._history_partitions import finish_at, history_partitions, partition_of, skip_ids_to
from tests._worker_sql import claim, finish

T0 = dt.datetime(2030, 1, 7, 12, 0, 0, tzinfo=dt.UTC)  # a Monday, on a whole minute
E = TypeVar("E", bound=events.Event)
HEADER_FIELDS = {field.name for field in attrs.fields(events.Event)}


def kinds(result: RunResult) -> list[str]:
    """The event class names a pass emitted."""
    return [type(e).__name__ for e in result.events]


def only(result: RunResult, event_type: type[E]) -> list[E]:
    """The events a pass emitted, every one of them checked to be an ``event_type``."""
    typed = [e for e in result.events if isinstance(e, event_type)]
    assert len(typed) == len(result.events), kinds(result)
    return typed


def own_fields(event: events.Event) -> dict[str, Any]:
    """An event's fields without those every event has (timestamp, daemon ...)."""
    return {
        name: value
        for name, value in attrs.asdict(event, recurse=False).items()
        if name not in HEADER_FIELDS
    }


def rows(
    db: psycopg.Connection[Any], config: Config, sql: str, *params: Any
) -> list[tuple[Any, ...]]:
    """Run ``sql`` with ``{s}`` replaced by the quoted test schema."""
    return db.execute(sql.replace("{s}", f'"{config.schema}"'), list(params)).fetchall()


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


class TestTicks:
    def test_interval_ticks_are_epoch_aligned(self) -> None:
        """Interval ticks fall on multiples of the period, so every orchestrator computes the same ones."""
        tick, following = interval_ticks(30_000, T0 + dt.timedelta(seconds=47))
        assert tick == T0 + dt.timedelta(seconds=30)
        assert following == T0 + dt.timedelta(seconds=60)

    def test_cron_ticks_honour_time_zone_and_exact_hits(self) -> None:
        """Cron ticks are read in the definition's time zone; a tick exactly at now counts."""
        tick, following = cron_ticks("0 9 * * *", "Europe/Paris", T0)
        assert tick == dt.datetime(2030, 1, 7, 8, 0, tzinfo=dt.UTC)  # 09:00 CET
        assert following == dt.datetime(2030, 1, 8, 8, 0, tzinfo=dt.UTC)
        assert cron_ticks("*/5 * * * *", None, T0)[0] == T0

    def test_cron_seconds_field(self) -> None:
        """A sixth cron field gives seconds."""
        tick, following = cron_ticks("* * * * * */10", None, T0 + dt.timedelta(seconds=25))
        assert (tick, following) == (T0 + dt.timedelta(seconds=20), T0 + dt.timedelta(seconds=30))


class TestScheduler:
    def test_first_tick_enqueues_an_empty_payload_job(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A new repeat definition waits for its first tick, then gets a job with payload {} and its num_attempts, and an OrchestratorJobScheduled event."""
        JobDefinition(
            config, name="tick", job_function=noop, repeat_interval_ms=60_000, num_attempts=4
        ).upsert(db)
        scheduler = RepeatScheduler(config, interval_ms=120_000)
        first = scheduler.run_once(db, T0 + dt.timedelta(seconds=5))
        assert kinds(first) == []
        assert first.next_run_in_s == pytest.approx(55.0)  # wakes for the next tick
        result = scheduler.run_once(db, T0 + dt.timedelta(seconds=60))
        assert kinds(result) == ["OrchestratorJobScheduled"]
        assert rows(
            db, config, "SELECT payload, max_attempts, tick_at, status::text FROM {s}.job"
        ) == [({}, 4, T0 + dt.timedelta(minutes=1), "available")]

    def test_one_job_per_tick(self, config: Config, db: psycopg.Connection[Any]) -> None:
        """Further passes within a tick enqueue nothing; the next tick enqueues one more."""
        JobDefinition(
            config, name="tick", job_function=noop, repeat_interval_ms=60_000, overlap=True
        ).upsert(db)
        scheduler = RepeatScheduler(config, interval_ms=30_000)
        for seconds in (1, 20, 59, 60, 61, 119, 120, 121, 179):
            scheduler.run_once(db, T0 + dt.timedelta(seconds=seconds))
        ticks = [r[0] for r in rows(db, config, "SELECT tick_at FROM {s}.job ORDER BY tick_at")]
        assert ticks == [T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=2)]

    def test_two_schedulers_enqueue_each_tick_once(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """Two orchestrators (two processes' configs) scheduling the same tick create one job."""
        other = Config(test_dsn, schema=config.schema)
        for cfg in (config, other):
            JobDefinition(
                cfg, name="tick", job_function=noop, repeat_interval_ms=1_000, overlap=True
            ).upsert(db)
        first, second = (
            RepeatScheduler(config, interval_ms=1_000),
            RepeatScheduler(other, interval_ms=1_000),
        )
        emitted = 0
        for step in range(20):
            now = T0 + dt.timedelta(milliseconds=250 * step)
            emitted += len(first.run_once(db, now).events) + len(second.run_once(db, now).events)
        other.close()
        ticks = [r[0] for r in rows(db, config, "SELECT tick_at FROM {s}.job ORDER BY tick_at")]
        assert ticks == [T0 + dt.timedelta(seconds=s) for s in range(5)]
        assert emitted == 5

    def test_missed_ticks_coalesce_into_one(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """After downtime, the missed ticks give one job, for the latest tick."""
        JobDefinition(
            config, name="tick", job_function=noop, repeat_interval_ms=60_000, overlap=True
        ).upsert(db)
        scheduler = RepeatScheduler(config, interval_ms=30_000)
        scheduler.run_once(db, T0)
        scheduler.run_once(db, T0 + dt.timedelta(hours=3, seconds=10))
        ticks = [r[0] for r in rows(db, config, "SELECT tick_at FROM {s}.job ORDER BY tick_at")]
        assert ticks == [T0, T0 + dt.timedelta(hours=3)]

    def test_overlap_off_skips_a_tick_while_the_previous_job_is_unfinished(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """With overlap off, a tick is skipped (with an event) while the last tick's job is unfinished."""
        JobDefinition(config, name="tick", job_function=noop, repeat_interval_ms=60_000).upsert(db)
        scheduler = RepeatScheduler(config, interval_ms=30_000)
        scheduler.run_once(db, T0)
        skipped = scheduler.run_once(db, T0 + dt.timedelta(minutes=1))
        again = scheduler.run_once(db, T0 + dt.timedelta(minutes=1, seconds=30))
        assert kinds(skipped) == ["OrchestratorTickSkipped"] and kinds(again) == []
        ((first_id,),) = rows(db, config, "SELECT id FROM {s}.job")
        finish_at(db, config, first_id, "succeeded")
        resumed = scheduler.run_once(db, T0 + dt.timedelta(minutes=2))
        assert kinds(resumed) == ["OrchestratorJobScheduled"]
        assert rows(db, config, "SELECT tick_at FROM {s}.job") == [(T0 + dt.timedelta(minutes=2),)]
        assert rows(db, config, "SELECT tick_at FROM {s}.job_history") == [(T0,)]

    def test_new_cron_definition_waits_for_its_next_tick(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A new cron definition does not run its last tick retroactively; it runs at the next one."""
        JobDefinition(config, name="nightly", job_function=noop, cron="0 3 * * *").upsert(db)
        scheduler = RepeatScheduler(config, interval_ms=30_000)
        assert kinds(scheduler.run_once(db, T0)) == []
        assert kinds(scheduler.run_once(db, T0 + dt.timedelta(hours=10))) == []
        result = scheduler.run_once(db, T0 + dt.timedelta(hours=15, seconds=1))
        assert kinds(result) == ["OrchestratorJobScheduled"]
        assert rows(db, config, "SELECT tick_at FROM {s}.job") == [
            (dt.datetime(2030, 1, 8, 3, tzinfo=dt.UTC),)
        ]

    def test_definition_without_repeat_or_absent_from_code_is_not_scheduled(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """A definition whose repeat was turned off, or that this code no longer has, gets no job."""
        old = Config(test_dsn, schema=config.schema)
        JobDefinition(
            old, name="was-repeating", job_function=noop, repeat_interval_ms=1_000
        ).upsert(db)
        JobDefinition(
            old, name="deleted-from-code", job_function=noop, repeat_interval_ms=1_000
        ).upsert(db)
        old.close()
        JobDefinition(config, name="was-repeating", job_function=noop).upsert(db)  # the new code
        assert kinds(RepeatScheduler(config, interval_ms=1_000).run_once(db, T0)) == []
        assert rows(db, config, "SELECT count(*) FROM {s}.job") == [(0,)]

    def test_empty_attrs_payload_type_is_accepted_for_repeat(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A repeat definition with an empty attrs payload type is scheduled with that empty payload."""

        @attrs.frozen
        class Nothing:
            pass

        JobDefinition(
            config, name="tick", job_function=noop, payload_type=Nothing, repeat_interval_ms=1_000
        ).upsert(db)
        assert kinds(RepeatScheduler(config, interval_ms=1_000).run_once(db, T0)) == [
            "OrchestratorJobScheduled"
        ]


class TestHeartbeat:
    def test_heartbeat_refreshes_and_rewrites_missing_rows(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Each pass sets last_heartbeat_at of every carried definition and writes missing rows again."""
        kept = JobDefinition(config, name="kept", job_function=noop)
        JobDefinition(config, name="lost", job_function=noop)
        kept.upsert(db)
        result = DefinitionHeartbeat(config, interval_ms=60_000).run_once(db, T0)
        assert sorted(
            e.definition for e in only(result, events.OrchestratorDefinitionHeartbeat)
        ) == ["kept", "lost"]
        assert result.counts["rewritten"] == 1
        stamps = dict(rows(db, config, "SELECT name, last_heartbeat_at FROM {s}.job_definition"))
        assert stamps["kept"] == T0 and "lost" in stamps


class TestRescuer:
    def test_expired_lease_goes_back_with_a_lost_attempt(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A running job whose lease expired is available again, its attempt logged as lost."""
        JobDefinition(config, name="job", job_function=noop, num_attempts=2).defer({})
        claimed = claim(db, config)[0]
        rescuer = Rescuer(config, interval_ms=5_000, worker_stale_threshold_ms=60_000)
        assert kinds(rescuer.run_once(db, None)) == []  # the lease is still live
        result = rescuer.run_once(db, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
        assert kinds(result) == ["OrchestratorJobRescued"]
        assert only(result, events.OrchestratorJobRescued)[0].reason == "lease_expired"
        assert rows(db, config, "SELECT status::text, attempt FROM {s}.job") == [("available", 1)]
        assert rows(db, config, "SELECT outcome FROM {s}.job_attempt") == [("lost",)]
        assert finish(db, config, claimed, "succeeded") == []  # the fence refuses the late finish

    def test_no_attempts_left_finalizes_as_failed(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A rescued job with no attempt left is finalized as failed: no_attempts_remaining."""
        JobDefinition(config, name="job", job_function=noop, num_attempts=1).defer({})
        claim(db, config)
        result = Rescuer(config, interval_ms=5_000, worker_stale_threshold_ms=60_000).run_once(
            db, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
        )
        assert [
            (type(e).__name__, e.reason) for e in only(result, events.OrchestratorJobFinalized)
        ] == [("OrchestratorJobFinalized", "no_attempts_remaining")]
        assert rows(db, config, "SELECT count(*) FROM {s}.job") == [(0,)]
        ((status, attempts),) = rows(
            db, config, "SELECT status::text, attempts FROM {s}.job_history"
        )
        assert status == "failed"
        assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "lost")]

    def test_jobs_of_a_stale_worker_are_rescued_before_their_lease_ends(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Jobs of a worker whose heartbeat is stale are rescued at once; a live worker's are not."""
        definition = JobDefinition(
            config, name="job", job_function=noop, num_attempts=3, lock_interval_ms=3_600_000
        )
        register = config.queries["worker_register"]
        ids = [
            db.execute(
                register,
                {
                    "name": n,
                    "role": "worker",
                    "host": "h",
                    "pid": 1,
                    "channels": ["_default"],
                    "concurrency": 1,
                    "secret": n,
                },
            ).fetchone()[0]  # type: ignore[index]
            for n in ("dead", "alive")
        ]
        definition.defer({})
        claim(db, config, worker_id=ids[0])
        definition.defer({})
        claim(db, config, worker_id=ids[1])
        rows(
            db,
            config,
            "UPDATE {s}.worker SET heartbeat_at = now() - interval '5 minutes' WHERE id = %s RETURNING id",
            ids[0],
        )
        result = Rescuer(config, interval_ms=5_000, worker_stale_threshold_ms=60_000).run_once(
            db, None
        )
        assert sorted(kinds(result)) == ["OrchestratorJobRescued", "OrchestratorWorkerLost"]
        assert rows(db, config, "SELECT locked_by, status::text FROM {s}.job ORDER BY id") == [
            (None, "available"),
            (ids[1], "running"),
        ]
        assert rows(db, config, "SELECT id FROM {s}.worker") == [(ids[1],)]

    def test_a_stale_workers_job_without_attempts_left_fails_into_the_history(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A stale worker's job on its last attempt moves to job_history as failed, its log whole."""
        definition = JobDefinition(
            config, name="job", job_function=noop, num_attempts=2, lock_interval_ms=3_600_000
        )
        ((dead,),) = rows(
            db,
            config,
            "INSERT INTO {s}.worker (name, role, host, pid, heartbeat_at) "
            "VALUES ('dead', 'worker', 'h', 1, now() - interval '5 minutes') RETURNING id",
        )
        handle = definition.defer({})
        finish(db, config, claim(db, config, worker_id=dead)[0], "failed")
        claim(db, config, worker_id=dead)
        result = Rescuer(config, interval_ms=5_000, worker_stale_threshold_ms=60_000).run_once(
            db, None
        )
        assert sorted((type(e).__name__, getattr(e, "reason", None)) for e in result.events) == [
            ("OrchestratorJobFinalized", "no_attempts_remaining"),
            ("OrchestratorWorkerLost", None),
        ]
        assert result.counts == {"rescued": 0, "failed": 1, "workers_lost": 1}
        assert rows(db, config, "SELECT count(*) FROM {s}.job") == [(0,)]
        assert rows(db, config, "SELECT count(*) FROM {s}.job_attempt") == [(0,)]
        ((job_id, status, last_error, attempts),) = rows(
            db, config, "SELECT id, status::text, last_error, attempts FROM {s}.job_history"
        )
        assert (job_id, status) == (handle.id, "failed")
        assert last_error.startswith("worker lost")
        assert [(a["attempt"], a["outcome"], a["worker_id"]) for a in attempts] == [
            (1, "failed", 1),
            (2, "lost", dead),
        ]


class TestFinalizer:
    def test_timeout_counts_from_run_at_not_creation(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A delayed job is timed out timeout_interval_ms after its run_at, not after its creation."""
        definition = JobDefinition(
            config, name="job", job_function=noop, timeout_interval_ms=60_000
        )
        definition.defer({}, delay_ms=3_600_000)
        finalizer = Finalizer(config, interval_ms=5_000)
        now = dt.datetime.now(dt.UTC)
        assert kinds(finalizer.run_once(db, now + dt.timedelta(minutes=30))) == []
        assert kinds(finalizer.run_once(db, now + dt.timedelta(minutes=59))) == []
        result = finalizer.run_once(db, now + dt.timedelta(minutes=62))
        assert [
            (type(e).__name__, e.reason) for e in only(result, events.OrchestratorJobFinalized)
        ] == [("OrchestratorJobFinalized", "timeout")]

    def test_running_job_timed_out_cannot_be_finished_later(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Timing out a running attempt logs it as timed_out, and its late success is refused."""
        JobDefinition(config, name="job", job_function=noop, timeout_interval_ms=1_000).defer({})
        claimed = claim(db, config)[0]
        Finalizer(config, interval_ms=5_000).run_once(
            db, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        )
        assert finish(db, config, claimed, "succeeded") == []
        assert rows(db, config, "SELECT count(*) FROM {s}.job") == [(0,)]
        ((status, last_error, attempts),) = rows(
            db, config, "SELECT status::text, last_error, attempts FROM {s}.job_history"
        )
        assert (status, last_error.startswith("timeout")) == ("failed", True)
        assert [(a["attempt"], a["outcome"], a["worker_id"]) for a in attempts] == [
            (1, "timed_out", 1)
        ]
        assert rows(db, config, "SELECT count(*) FROM {s}.job_attempt") == [(0,)]

    def test_a_job_timed_out_before_it_ran_has_no_attempt_in_its_log(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job that never started times out into the history with an empty attempt log."""
        handle = JobDefinition(
            config, name="job", job_function=noop, timeout_interval_ms=1_000
        ).defer({})
        result = Finalizer(config, interval_ms=5_000).run_once(
            db, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        )
        assert [(e.job_id, e.reason) for e in only(result, events.OrchestratorJobFinalized)] == [
            (handle.id, "timeout")
        ]
        assert rows(db, config, "SELECT status::text, attempt, attempts FROM {s}.job_history") == [
            ("failed", 0, [])
        ]

    def test_failure_cascades_down_the_chain_in_one_pass(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """After A fails, one pass finalizes B and C (A <- B <- C) as unmet_dependencies."""
        a = JobDefinition(config, name="a", job_function=noop).defer({})
        b = JobDefinition(config, name="b", job_function=noop, channel="other").defer(
            {}, depends_on=[a]
        )
        c = JobDefinition(config, name="c", job_function=noop).defer({}, depends_on=[b])
        finish(db, config, claim(db, config)[0], "failed")
        result = Finalizer(config, interval_ms=5_000).run_once(db, None)
        assert [(e.job_id, e.reason) for e in only(result, events.OrchestratorJobFinalized)] == [
            (b.id, "unmet_dependencies"),
            (c.id, "unmet_dependencies"),
        ]
        assert rows(db, config, "SELECT count(*) FROM {s}.job") == [(0,)]
        assert rows(
            db, config, "SELECT id, status::text, last_error FROM {s}.job_history ORDER BY id"
        ) == [
            (a.id, "failed", "RuntimeError: boom"),
            (b.id, "failed", "unmet_dependencies: a job it depends on failed or was cancelled"),
            (c.id, "failed", "unmet_dependencies: a job it depends on failed or was cancelled"),
        ]

    def test_a_dependency_cancelled_or_no_longer_retained_is_unmet(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A waiting job fails when a dependency was cancelled, or is in neither job nor job_history."""
        cancelled, gone, pending = (
            JobDefinition(config, name=name, job_function=noop, channel="idle").defer({})
            for name in ("cancelled", "gone", "pending")
        )
        dependent = JobDefinition(config, name="dependent", job_function=noop)
        on_cancelled = dependent.defer({}, depends_on=[cancelled])
        on_gone = dependent.defer({}, depends_on=[gone])
        on_pending = dependent.defer({}, depends_on=[pending])
        finish_at(db, config, cancelled.id, "cancelled")
        finish_at(db, config, gone.id, "succeeded")
        rows(db, config, "DELETE FROM {s}.job_history WHERE id = %s RETURNING id", gone.id)
        result = Finalizer(config, interval_ms=5_000).run_once(db, None)
        assert [(e.job_id, e.reason) for e in only(result, events.OrchestratorJobFinalized)] == [
            (on_cancelled.id, "unmet_dependencies"),
            (on_gone.id, "unmet_dependencies"),
        ]
        assert on_pending.status() == "waiting"
        assert rows(
            db, config, "SELECT id FROM {s}.job_history WHERE definition = 'dependent' ORDER BY id"
        ) == [(on_cancelled.id,), (on_gone.id,)]

    def test_one_finalization_per_job_by_precedence(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job both timed out and with a failed dependency is finalized once, as timeout; a second pass does nothing."""
        a = JobDefinition(config, name="a", job_function=noop).defer({})
        JobDefinition(config, name="b", job_function=noop, timeout_interval_ms=1_000).defer(
            {}, depends_on=[a]
        )
        finish(db, config, claim(db, config)[0], "failed")
        finalizer = Finalizer(config, interval_ms=5_000)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        first = finalizer.run_once(db, later)
        assert [e.reason for e in only(first, events.OrchestratorJobFinalized)] == ["timeout"]
        assert kinds(finalizer.run_once(db, later)) == []

    def test_catch_up_releases_jobs_whose_dependencies_succeeded(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A waiting job whose dependencies all succeeded is released by the finalizer if nothing else did."""
        a = JobDefinition(config, name="a", job_function=noop).defer({})
        b = JobDefinition(config, name="b", job_function=noop).defer({}, depends_on=[a])
        finish_at(db, config, a.id, "succeeded")  # as a finish would, without releasing b
        result = Finalizer(config, interval_ms=5_000).run_once(db, None)
        assert [
            (type(e).__name__, e.job_id) for e in only(result, events.OrchestratorJobReleased)
        ] == [("OrchestratorJobReleased", b.id)]
        assert b.status() == "available"


class TestSweeper:
    def sweeper(
        self,
        config: Config,
        *,
        archive: bool = False,
        archive_retention_ms: int | None = None,
        batch_size: int = 1_000,
    ) -> Sweeper:
        """A sweeper with one-hour thresholds."""
        return Sweeper(
            config,
            interval_ms=300_000,
            finalized_job_threshold_ms=3_600_000,
            stale_definition_threshold_ms=3_600_000,
            archive=archive,
            archive_retention_ms=archive_retention_ms,
            batch_size=batch_size,
        )

    def test_a_partition_past_the_retention_is_dropped_whole(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A partition whose jobs all finished before the retention goes in one pass, with its edges; a newer one stays."""
        definition = JobDefinition(config, name="job", job_function=noop)
        two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        first = definition.defer({})
        second = definition.defer({}, depends_on=[first])
        finish_at(db, config, first.id, "succeeded", finalized_at=two_days_ago)
        finish_at(db, config, second.id, "succeeded", finalized_at=two_days_ago)
        skip_ids_to(db, config, 1_000_000)
        newer = definition.defer({})
        finish(db, config, claim(db, config)[0], "succeeded")
        skip_ids_to(db, config, 2_000_000)  # every id of both ranges given out
        assert partition_of(db, config, first.id) == "job_history_0"
        assert partition_of(db, config, newer.id) == "job_history_1000000"
        result = self.sweeper(config).run_once(db, None)
        assert kinds(result) == ["OrchestratorHistoryPruned"]
        (pruned,) = only(result, events.OrchestratorHistoryPruned)
        assert (pruned.partition, pruned.jobs) == ("job_history_0", 2)
        assert two_days_ago < pruned.cutoff < dt.datetime.now(dt.UTC)
        assert result.counts["history_partitions_dropped"] == 1
        assert result.counts["history_jobs_dropped"] == 2
        assert "job_history_0" not in history_partitions(db, config)
        assert "job_history_1000000" in history_partitions(db, config)
        assert rows(db, config, "SELECT id FROM {s}.job_history") == [(newer.id,)]
        assert rows(db, config, "SELECT count(*) FROM {s}.job_dependency") == [(0,)]
        assert kinds(self.sweeper(config).run_once(db, None)) == []  # the newer one stays

    def test_the_partition_ids_are_given_from_is_kept_however_old(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A partition whose range is not all given out yet is not dropped: ids still land in it."""
        handle = JobDefinition(config, name="job", job_function=noop).defer({})
        finish_at(
            db,
            config,
            handle.id,
            "succeeded",
            finalized_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        )
        result = self.sweeper(config).run_once(db, None)
        assert result.counts["history_partitions_dropped"] == 0
        assert partition_of(db, config, handle.id) == "job_history_0"

    def test_old_rows_of_the_default_partition_are_deleted_one_by_one(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job that finished into the default partition is deleted past the retention, with its edges, one event each."""
        definition = JobDefinition(config, name="job", job_function=noop)
        base = definition.defer({})
        finish_at(db, config, base.id, "succeeded")
        skip_ids_to(db, config, 10_000_000)
        stray = definition.defer({}, depends_on=[base])  # no partition covers its id
        finish_at(
            db,
            config,
            stray.id,
            "succeeded",
            finalized_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
        )
        skip_ids_to(db, config, 50_000_000)
        definition.defer({})  # the highest id: partitions are made from there on
        assert partition_of(db, config, stray.id) == "job_history_default"
        result = self.sweeper(config).run_once(db, None)
        swept = [e for e in result.events if isinstance(e, events.OrchestratorFinalizedJobSwept)]
        assert [own_fields(e) for e in swept] == [
            {"job_id": stray.id, "definition": "job", "archived": False}
        ]
        # The empty partitions of the ids skipped over go too; base's is kept
        # (its job finished within the retention).
        pruned = [e for e in result.events if isinstance(e, events.OrchestratorHistoryPruned)]
        assert {e.jobs for e in pruned} <= {0}
        assert "job_history_0" in history_partitions(db, config)
        assert result.counts["jobs_swept"] == 1
        assert rows(db, config, "SELECT id FROM {s}.job_history") == [(base.id,)]
        assert rows(db, config, "SELECT count(*) FROM {s}.job_dependency") == [(0,)]

    def test_prepare_makes_partitions_ahead_and_moves_default_rows_in(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Each pass makes the partitions up to 2,000,000 ids ahead; rows the default partition took move in."""
        skip_ids_to(db, config, 5_000_000)
        handle = JobDefinition(config, name="job", job_function=noop).defer({"n": 1})
        finish(db, config, claim(db, config)[0], "succeeded", '{"n": 2}')
        assert partition_of(db, config, handle.id) == "job_history_default"
        result = self.sweeper(config).run_once(db, None)
        assert result.counts["history_partitions_prepared"] == 3
        partitions = history_partitions(db, config)
        assert {"job_history_5000000", "job_history_6000000", "job_history_7000000"} <= set(
            partitions
        )
        assert partition_of(db, config, handle.id) == "job_history_5000000"
        assert rows(db, config, "SELECT count(*) FROM {s}.job_history_default") == [(0,)]
        assert handle.result(timeout=0) == {"n": 2}
        again = self.sweeper(config).run_once(db, None)
        assert again.counts["history_partitions_prepared"] == 0
        assert history_partitions(db, config) == partitions

    def test_a_drop_that_cannot_get_its_lock_gives_up_and_is_retried(
        self, config: Config, db: psycopg.Connection[Any], test_dsn: str
    ) -> None:
        """While a long reader of the history holds it, the drop gives up after its lock_timeout; the next pass drops."""
        handle = JobDefinition(config, name="job", job_function=noop).defer({})
        finish_at(
            db,
            config,
            handle.id,
            "succeeded",
            finalized_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
        )
        skip_ids_to(db, config, 1_000_000)
        with psycopg.connect(test_dsn) as reader:  # a transaction stays open
            reader.execute(f'SELECT count(*) FROM "{config.schema}".job_history').fetchone()
            blocked = self.sweeper(config).run_once(db, None)
            reader.rollback()
        assert blocked.counts["history_lock_timeouts"] == 1
        assert blocked.counts["history_partitions_dropped"] == 0
        assert partition_of(db, config, handle.id) == "job_history_0"
        result = self.sweeper(config).run_once(db, None)
        assert result.counts["history_partitions_dropped"] == 1
        assert partition_of(db, config, handle.id) is None

    def test_archive_keeps_finished_jobs_for_ever_by_default(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """With archive=True and no archive_retention_ms nothing leaves the history; archive=False drops it."""
        handle = JobDefinition(config, name="job", job_function=noop).defer({"k": 1})
        finish_at(
            db,
            config,
            handle.id,
            "succeeded",
            finalized_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        )
        skip_ids_to(db, config, 1_000_000)
        kept = self.sweeper(config, archive=True).run_once(db, None)
        assert kinds(kept) == []
        assert rows(db, config, "SELECT id, payload FROM {s}.job_history") == [
            (handle.id, {"k": 1})
        ]
        dropped = self.sweeper(config, archive=False).run_once(db, None)
        assert kinds(dropped) == ["OrchestratorHistoryPruned"]
        assert rows(db, config, "SELECT count(*) FROM {s}.job_history") == [(0,)]

    def test_archive_retention_ms_is_the_retention_with_archive(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """With archive=True, archive_retention_ms decides, not finalized_job_threshold_ms."""
        definition = JobDefinition(config, name="job", job_function=noop)
        now = dt.datetime.now(dt.UTC)
        old = definition.defer({})
        finish_at(db, config, old.id, "succeeded", finalized_at=now - dt.timedelta(days=10))
        skip_ids_to(db, config, 1_000_000)
        recent = definition.defer({})
        finish_at(db, config, recent.id, "succeeded", finalized_at=now - dt.timedelta(days=2))
        skip_ids_to(db, config, 2_000_000)
        week = 7 * 24 * 3_600_000
        result = self.sweeper(config, archive=True, archive_retention_ms=week).run_once(db, None)
        assert [e.partition for e in only(result, events.OrchestratorHistoryPruned)] == [
            "job_history_0"
        ]
        assert rows(db, config, "SELECT id FROM {s}.job_history") == [(recent.id,)]

    @pytest.mark.parametrize("bad", [-1, "7 days", 1.5, True])
    def test_archive_retention_rejects_what_is_not_a_duration(
        self, config: Config, bad: Any
    ) -> None:
        """A bad archive_retention_ms is refused at construction, naming the argument."""
        with pytest.raises(ConfigurationError, match="archive_retention_ms"):
            Orchestrator(config, archive=True, archive_retention_ms=bad)

    def test_a_dependency_dropped_with_its_partition_fails_its_waiting_dependent(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A finished job is not kept past the retention for a waiting dependent, which then fails."""
        a = JobDefinition(config, name="a", job_function=noop).defer({})
        other = JobDefinition(config, name="other", job_function=noop).defer({})
        finish_at(
            db,
            config,
            a.id,
            "succeeded",
            finalized_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
        )
        skip_ids_to(db, config, 1_000_000)
        b = JobDefinition(config, name="b", job_function=noop).defer({}, depends_on=[a, other])
        result = self.sweeper(config).run_once(db, None)
        assert [e.partition for e in only(result, events.OrchestratorHistoryPruned)] == [
            "job_history_0"
        ]
        assert b.status() == "waiting"  # its edges stay: they are in another range
        finalized = Finalizer(config, interval_ms=5_000).run_once(db, None)
        assert [(e.job_id, e.reason) for e in only(finalized, events.OrchestratorJobFinalized)] == [
            (b.id, "unmet_dependencies")
        ]

    def test_an_unfinished_job_of_a_dropped_range_keeps_its_dependencies(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job still waiting when the partition of its id range is dropped keeps waiting for its dependencies."""
        pending = JobDefinition(config, name="pending", job_function=noop).defer({})
        b = JobDefinition(config, name="b", job_function=noop).defer({}, depends_on=[pending])
        skip_ids_to(db, config, 1_000_000)
        result = self.sweeper(config).run_once(db, None)
        # Its range held no finished job: it is dropped all the same.
        assert [e.partition for e in only(result, events.OrchestratorHistoryPruned)] == [
            "job_history_0"
        ]
        Finalizer(config, interval_ms=5_000).run_once(db, None)
        assert b.status() == "waiting"  # `pending` has not run

    def test_attempts_and_edges_of_jobs_in_neither_table_are_deleted(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Leftover attempt-log rows and dependency edges go, walked in slices; those of live jobs stay."""
        definition = JobDefinition(config, name="job", job_function=noop, num_attempts=3)
        a = definition.defer({})
        b = definition.defer({}, depends_on=[a])
        finish(db, config, claim(db, config)[0], "failed")  # a: one attempt-log row, retried
        gone = 1_000_000_000  # an id in neither table
        rows(
            db,
            config,
            "INSERT INTO {s}.job_dependency (job_id, required_job_id) "
            "SELECT job_id, required FROM (VALUES (0, %s), (%s, %s), (%s, %s), (%s, %s)) "
            "AS v(job_id, required) RETURNING job_id",
            a.id,
            gone,
            a.id,
            gone,
            b.id,
            gone + 1,
            a.id,
        )
        rows(
            db,
            config,
            "INSERT INTO {s}.job_attempt (job_id, attempt, started_at, outcome) "
            "VALUES (%s, 1, now(), 'failed') RETURNING id",
            gone,
        )
        result = self.sweeper(config, batch_size=2).run_once(db, None)
        assert result.counts["orphan_attempts_deleted"] == 1
        assert result.counts["orphan_dependencies_deleted"] == 4
        assert rows(db, config, "SELECT job_id, required_job_id FROM {s}.job_dependency") == [
            (b.id, a.id)
        ]
        assert rows(db, config, "SELECT job_id FROM {s}.job_attempt") == [(a.id,)]

    def test_stale_definitions_without_jobs_are_swept(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A definition not heartbeated for the threshold goes once it has no job at all, finished ones included."""
        JobDefinition(config, name="with-job", job_function=noop).defer({})
        finished = JobDefinition(config, name="with-finished-job", job_function=noop).defer({})
        finish_at(db, config, finished.id, "succeeded")
        JobDefinition(config, name="idle", job_function=noop).upsert(db)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        result = self.sweeper(config).run_once(db, later)
        assert [
            (type(e).__name__, e.definition)
            for e in only(result, events.OrchestratorStaleDefinitionSwept)
        ] == [("OrchestratorStaleDefinitionSwept", "idle")]
        assert rows(db, config, "SELECT name FROM {s}.job_definition ORDER BY name") == [
            ("with-finished-job",),
            ("with-job",),
        ]


class TestLeaderLease:
    def test_one_holder_renewal_expiry_and_resignation(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Only one elector holds the lease; it renews; another takes it when it expires or is resigned."""
        first = Elector(config, holder="first", lease_ms=60_000)
        second = Elector(config, holder="second", lease_ms=60_000)
        assert first.attempt(db) and first.is_leader
        assert not second.attempt(db) and not second.is_leader
        assert first.attempt(db)  # renewal
        rows(
            db,
            config,
            "UPDATE {s}.leader SET expires_at = now() - interval '1 second' RETURNING name",
        )
        assert second.attempt(db) and not first.attempt(db)
        second.resign(db)
        assert first.attempt(db)


class TestDaemon:
    def test_every_service_runs_at_start_and_one_leader(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """Each maintenance service runs once at start; of two orchestrators, one leads at a time."""
        slow = {
            "repeat_interval_ms": 3_600_000,
            "heartbeat_interval_ms": 3_600_000,
            "clean_interval_ms": 3_600_000,
            "rescue_interval_ms": 3_600_000,
            "finalize_interval_ms": 3_600_000,
            "leader_lease_ms": 2_000,
        }
        first = Orchestrator(config, name="first", event_handler=recorder, **slow)  # type: ignore[arg-type]
        second = Orchestrator(config, name="second", event_handler=recorder, **slow)  # type: ignore[arg-type]
        first.start()
        second.start()
        try:
            recorder.wait_for(events.OrchestratorLeadershipAcquired)
            leader = first if first.is_leader else second
            wait_until(lambda: all(count >= 1 for count in leader.passes.values()))
            # The follower heartbeats its definitions too (it runs no other service).
            wait_until(lambda: first.passes["heartbeat"] >= 1 and second.passes["heartbeat"] >= 1)
            assert len(recorder.of_type(events.OrchestratorLeadershipAcquired)) == 1
            follower = second if leader is first else first
            leader.stop()
            leader.join(timeout=10)
            recorder.wait_for(
                events.OrchestratorLeadershipAcquired,
                lambda e: e.daemon_id == follower.daemon_id,
                timeout=10,
            )
        finally:
            for daemon in (first, second):
                daemon.stop()
                daemon.join(timeout=10)

    def test_events_of_its_passes_carry_the_orchestrators_identity(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """Events built by the maintenance services name the orchestrator that ran the pass."""
        JobDefinition(config, name="carried", job_function=noop)
        orchestrator = Orchestrator(config, name="passes", event_handler=recorder)
        orchestrator.start()
        try:
            heartbeat = recorder.wait_for(events.OrchestratorDefinitionHeartbeat)[0]
            gauges = recorder.wait_for(events.OrchestratorQueueGauges)[0]
        finally:
            orchestrator.stop()
            orchestrator.join(timeout=10)
        assert heartbeat.definition == "carried"
        for event in (heartbeat, gauges):
            assert (event.daemon_id, event.daemon_name, event.role) == (
                orchestrator.daemon_id,
                "passes-orchestrator",
                "orchestrator",
            )
        started = recorder.of_type(events.DaemonStarted)[0]
        assert started.timestamp <= heartbeat.timestamp <= dt.datetime.now(dt.UTC)

    def test_worker_and_orchestrator_run_a_repeat_job(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """An orchestrator's tick job is run by a worker in the same process."""
        JobDefinition(config, name="tick", job_function=noop, repeat_interval_ms=500)
        orchestrator = Orchestrator(
            config, event_handler=recorder, repeat_interval_ms=100, leader_lease_ms=1_000
        )
        worker = Worker(config, event_handler=recorder)
        orchestrator.start()
        worker.start()
        try:
            recorder.wait_for(events.WorkerJobSucceeded, count=2, timeout=15)
        finally:
            for daemon in (orchestrator, worker):
                daemon.stop()
                daemon.join(timeout=10)
