"""Pausing and resuming channels and definitions against a real PostgreSQL.

``config.channels`` and ``config.definitions`` (and their async twins): a
paused channel's or definition's jobs are not claimed by any worker from its
next claim on, with no restart; running jobs finish; a resume wakes the
workers; repeat ticks of a paused definition are skipped and counted; bad
input is one clear error and writes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition, Worker, events
from orchestra._orchestrator._scheduler import RepeatScheduler
from orchestra.errors import ConfigurationError, UnknownDefinitionError
from orchestra.testing import EventRecorder, wait_until
from tests._running import running
from tests._worker_sql import claim

T0 = dt.datetime(2030, 1, 7, 12, 0, 0, tzinfo=dt.UTC)
MINUTE_MS = 60_000


def noop(payload: Any = None) -> None:
    """Does nothing."""


def define(config: Config, name: str, channel: str = "_default", **kwargs: Any) -> JobDefinition:
    definition = JobDefinition(
        config, name=name, job_function=noop, channel=channel, lock_interval_ms=5_000, **kwargs
    )
    with config.connection() as conn:
        definition.upsert(conn)
    return definition


def status(config: Config, job_id: int) -> str:
    return config.jobs.get(job_id, with_attempts=False).status


def pause_rows(db: psycopg.Connection[Any], config: Config) -> list[tuple[Any, ...]]:
    """Every stored pause: the channel rows, then the paused definitions."""
    channels = db.execute(f'SELECT channel FROM "{config.schema}".channel_pause').fetchall()
    definitions = db.execute(
        f'SELECT name FROM "{config.schema}".job_definition WHERE paused'
    ).fetchall()
    return [*channels, *definitions]


class TestPausedDefinition:
    def test_a_running_worker_stops_claiming_a_paused_definition_and_resumes_after_resume(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """Paused while the worker runs: its new jobs wait, other definitions' jobs run;
        resumed: the waiting job runs, without a restart."""
        held = define(config, "held")
        other = define(config, "other")
        worker = Worker(config, event_handler=recorder, process_interval_ms=50)
        with running(worker):
            first = held.defer({})
            recorder.wait_for(events.WorkerJobSucceeded, lambda e: e.job_id == first.id)
            assert config.definitions.pause("held") is True
            waiting = held.defer({})
            ran = other.defer({})
            recorder.wait_for(events.WorkerJobSucceeded, lambda e: e.job_id == ran.id)
            polls = worker.stats.claim_queries
            wait_until(lambda: worker.stats.claim_queries >= polls + 5)  # several polls later
            assert status(config, waiting.id) == "available"
            assert config.definitions.resume("held") is True
            recorder.wait_for(events.WorkerJobSucceeded, lambda e: e.job_id == waiting.id)

    def test_a_running_job_finishes_when_its_definition_is_paused(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """Pausing does not touch a job already running: it succeeds."""
        release = threading.Event()
        slow = JobDefinition(
            config, name="slow", job_function=lambda: release.wait(10), lock_interval_ms=5_000
        )
        handle = slow.defer(None)
        with running(Worker(config, event_handler=recorder, process_interval_ms=50)):
            recorder.wait_for(events.WorkerJobClaimed, lambda e: e.job_id == handle.id)
            config.definitions.pause("slow")
            release.set()
            recorder.wait_for(events.WorkerJobSucceeded, lambda e: e.job_id == handle.id)
        assert status(config, handle.id) == "succeeded"

    def test_no_claim_path_takes_a_paused_definitions_jobs(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Plain, resource-keyed and limited jobs of a paused definition are all left alone."""
        plain = define(config, "plain")
        keyed = define(config, "keyed")
        limited = define(config, "limited", max_concurrency=5)
        for name in ("plain", "keyed", "limited"):
            config.definitions.pause(name)
        plain.defer({})
        keyed.defer({}, resource_key="k")
        limited.defer({})
        assert claim(db, config, limit=10) == []
        with db.transaction():
            locked = db.execute(
                config.queries["definition_lock_limited"], {"definitions": ["limited"]}
            ).fetchall()
            claimed = db.execute(
                config.queries["job_claim_limited"],
                {"definitions": ["limited"], "limit": 10, "worker_id": 1, "claim_id": "x"},
            ).fetchall()
        assert (locked, claimed) == ([], [])
        for name in ("plain", "keyed", "limited"):
            config.definitions.resume(name)
        assert len(claim(db, config, limit=10)) == 2  # the limited one is the guarded path's
        with db.transaction():
            db.execute(config.queries["definition_lock_limited"], {"definitions": ["limited"]})
            claimed = db.execute(
                config.queries["job_claim_limited"],
                {"definitions": ["limited"], "limit": 10, "worker_id": 1, "claim_id": "y"},
            ).fetchall()
        assert len(claimed) == 1

    def test_a_paused_definitions_job_does_not_hold_back_a_shared_resource_key(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The other definition's job with the same key is claimed, on either claim path."""
        paused = define(config, "paused_first")
        other = define(config, "other")
        guarded = define(config, "guarded", max_concurrency=5)
        paused.defer({}, resource_key="k")  # the key's head, by id
        plain_id = other.defer({}, resource_key="k").id
        config.definitions.pause("paused_first")
        assert [row[0] for row in claim(db, config, limit=10)] == [plain_id]
        # The guarded path, on a key whose head is the paused definition's too.
        paused.defer({}, resource_key="k2")
        guarded_id = guarded.defer({}, resource_key="k2").id
        with db.transaction():
            db.execute(config.queries["definition_lock_limited"], {"definitions": ["guarded"]})
            claimed = db.execute(
                config.queries["job_claim_limited"],
                {"definitions": ["guarded"], "limit": 10, "worker_id": 1, "claim_id": "z"},
            ).fetchall()
        assert [row[0] for row in claimed] == [guarded_id]

    def test_a_pause_outlasts_a_restart_of_the_daemons(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A daemon storing the definition's settings again at its start keeps it paused."""
        definition = define(config, "kept")
        config.definitions.pause("kept")
        definition.upsert(db)
        assert config.definitions.paused() == ["kept"]
        definition.defer({})
        assert claim(db, config) == []


class TestPausedChannel:
    def test_a_paused_channel_is_skipped_and_its_jobs_run_once_resumed(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """A channel paused before it had any job: a worker of two channels runs the
        other channel's jobs only; after the resume, the paused channel's too."""
        assert config.channels.pause("mail") is True
        mail = define(config, "mail", "mail")
        report = define(config, "report", "reports")
        waiting = mail.defer({})
        worker = Worker(
            config, channels=["mail", "reports"], event_handler=recorder, process_interval_ms=50
        )
        with running(worker):
            ran = report.defer({})
            recorder.wait_for(events.WorkerJobSucceeded, lambda e: e.job_id == ran.id)
            polls = worker.stats.claim_queries
            wait_until(lambda: worker.stats.claim_queries >= polls + 5)
            assert status(config, waiting.id) == "available"
            assert config.channels.resume("mail") is True
            recorder.wait_for(events.WorkerJobSucceeded, lambda e: e.job_id == waiting.id)

    def test_a_resume_wakes_an_idle_worker(self, config: Config, recorder: EventRecorder) -> None:
        """The resume notifies the channel: a worker polling once a minute runs the job now."""
        config.channels.pause("mail")
        handle = define(config, "mail", "mail").defer({})
        worker = Worker(config, channel="mail", event_handler=recorder, process_interval_ms=120_000)
        with running(worker):
            wait_until(lambda: worker._listener is not None and worker._listener.connected.is_set())
            wait_until(lambda: worker.stats.claim_queries >= 1)
            assert status(config, handle.id) == "available"
            config.channels.resume("mail")
            recorder.wait_for(events.WorkerJobSucceeded, timeout=20)

    def test_the_guarded_claim_leaves_a_paused_channels_jobs_alone(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A limited definition's jobs of a paused channel are not claimed either."""
        define(config, "limited", "mail", release_interval_ms=1).defer({})
        config.channels.pause("mail")
        with db.transaction():
            db.execute(config.queries["definition_lock_limited"], {"definitions": ["limited"]})
            claimed = db.execute(
                config.queries["job_claim_limited"],
                {"definitions": ["limited"], "limit": 10, "worker_id": 1, "claim_id": "x"},
            ).fetchall()
        assert claimed == []


class TestRepeatTicks:
    def test_ticks_of_a_paused_definition_are_skipped_and_counted(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Each due tick of a paused definition enqueues nothing, is counted as paused
        and reported as skipped; once resumed, the next tick runs as usual."""
        every_minute = JobDefinition(
            config, name="tick", job_function=noop, repeat_interval_ms=MINUTE_MS, overlap=True
        )
        every_minute.upsert(db)
        scheduler = RepeatScheduler(config, interval_ms=MINUTE_MS)
        scheduler.run_once(db, T0)  # plans the first tick, T0, and enqueues it
        config.definitions.pause("tick")
        paused_passes = [scheduler.run_once(db, T0 + dt.timedelta(minutes=k)) for k in (1, 2)]
        assert [r.counts["paused"] for r in paused_passes] == [1, 1]
        assert [r.counts["scheduled"] for r in paused_passes] == [0, 0]
        skipped = [e for r in paused_passes for e in r.events]
        assert all(
            isinstance(e, events.OrchestratorTickSkipped) and e.reason == "paused" for e in skipped
        )
        assert [e.tick_at for e in skipped] == [  # type: ignore[attr-defined]
            T0 + dt.timedelta(minutes=1),
            T0 + dt.timedelta(minutes=2),
        ]
        config.definitions.resume("tick")
        resumed = scheduler.run_once(db, T0 + dt.timedelta(minutes=3))
        assert (resumed.counts["scheduled"], resumed.counts["paused"]) == (1, 0)
        ticks = db.execute(f'SELECT tick_at FROM "{config.schema}".job ORDER BY tick_at')
        assert [row[0] for row in ticks.fetchall()] == [T0, T0 + dt.timedelta(minutes=3)]


class TestManagement:
    def test_pausing_and_resuming_are_idempotent_and_listed(self, config: Config) -> None:
        """A second pause or resume changes nothing and says so; paused() lists the pauses."""
        define(config, "d")
        assert [config.channels.pause("mail"), config.channels.pause("mail")] == [True, False]
        assert [config.definitions.pause("d"), config.definitions.pause("d")] == [True, False]
        assert [p.channel for p in config.channels.paused()] == ["mail"]
        assert config.channels.paused()[0].paused_at is not None
        assert config.definitions.paused() == ["d"]
        assert [config.channels.resume("mail"), config.channels.resume("mail")] == [True, False]
        assert [config.definitions.resume("d"), config.definitions.resume("d")] == [True, False]
        assert (config.channels.paused(), config.definitions.paused()) == ([], [])

    def test_pausing_an_unknown_definition_is_one_error_and_writes_nothing(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A name no definition row has: UnknownDefinitionError, one line, nothing stored."""
        define(config, "known")
        with pytest.raises(UnknownDefinitionError) as raised:
            config.definitions.pause("nope")
        assert raised.value.name == "nope"
        assert "'nope'" in str(raised.value) and "\n" not in str(raised.value)
        with pytest.raises(UnknownDefinitionError):
            config.definitions.resume("nope")
        assert pause_rows(db, config) == []

    @pytest.mark.parametrize("name", ["", "has space", "x" * 129, "new\nline", 7])
    def test_a_bad_channel_name_is_refused_and_writes_nothing(
        self, config: Config, db: psycopg.Connection[Any], name: Any
    ) -> None:
        """An invalid channel name: ConfigurationError naming `channel`, nothing stored."""
        with pytest.raises(ConfigurationError, match=r"^channel: "):
            config.channels.pause(name)
        with pytest.raises(ConfigurationError, match=r"^channel: "):
            config.channels.resume(name)
        assert pause_rows(db, config) == []

    def test_a_bad_definition_name_is_refused_before_any_statement(self, config: Config) -> None:
        """An empty or non-string name: ConfigurationError naming `definition`."""
        with pytest.raises(ConfigurationError, match=r"^definition: "):
            config.definitions.pause("")
        with pytest.raises(ConfigurationError, match=r"^definition: "):
            config.definitions.pause(None)  # type: ignore[arg-type]

    def test_the_async_twins_pause_and_resume(self, config: Config) -> None:
        """config.channels_async and config.definitions_async do the same, as coroutines."""
        define(config, "d")

        async def scenario() -> list[Any]:
            try:
                return [
                    await config.channels_async.pause("mail"),
                    await config.definitions_async.pause("d"),
                    [p.channel for p in await config.channels_async.paused()],
                    await config.definitions_async.paused(),
                    await config.channels_async.resume("mail"),
                    await config.definitions_async.resume("d"),
                    await config.definitions_async.resume("d"),
                ]
            finally:
                await config.close_async()

        assert asyncio.run(scenario()) == [True, True, ["mail"], ["d"], True, True, False]
        with pytest.raises(UnknownDefinitionError):
            asyncio.run(config.definitions_async.pause("nope"))

    def test_definitions_stays_a_mapping_of_the_registered_definitions(
        self, config: Config
    ) -> None:
        """config.definitions is still the registry's snapshot, by name."""
        definition = define(config, "d")
        assert dict(config.definitions) == {"d": definition}
        assert config.definitions == {"d": definition}
        assert "d" in config.definitions and len(config.definitions) == 1
