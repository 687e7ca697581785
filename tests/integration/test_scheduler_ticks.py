"""When a repeat definition's ticks start: new definitions and changed intervals.

A definition's first tick is the first tick at or after the moment a scheduler
first sees it, and two ticks of an interval definition are at least one
interval apart, also across a change of the interval. Time is passed to
``run_once`` explicitly, as the orchestrator's loop would pass it: each pass at
the moment the previous one asked to be woken.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition
from orchestra._orchestrator._scheduler import RepeatScheduler, interval_ticks, planned_tick

T0 = dt.datetime(2030, 1, 7, 12, 0, 0, tzinfo=dt.UTC)  # on a whole hour
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
HOUR_MS = 3_600_000
TEN_MINUTES_MS = 600_000


def noop() -> None:
    """A repeatable job function that does nothing."""


def simulate(
    scheduler: RepeatScheduler, db: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime
) -> None:
    """Run passes from ``start`` to ``end``, each when the previous pass asked to run again."""
    now = start
    while now <= end:
        result = scheduler.run_once(db, now)
        assert result.next_run_in_s is not None and result.next_run_in_s > 0
        now += dt.timedelta(seconds=result.next_run_in_s)


def tick_jobs(db: psycopg.Connection[Any], config: Config) -> list[tuple[dt.datetime, dt.datetime]]:
    """``(tick_at, run_at)`` of every tick job, in tick order."""
    return [
        (row[0], row[1])
        for row in db.execute(
            f'SELECT tick_at, run_at FROM "{config.schema}".job ORDER BY tick_at'
        ).fetchall()
    ]


def gaps(times: Sequence[dt.datetime]) -> list[dt.timedelta]:
    """The time between consecutive entries."""
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def definition_state(
    db: psycopg.Connection[Any], config: Config, name: str
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``(last_repeated_at, next_tick_at)`` of a definition."""
    row = db.execute(
        f'SELECT last_repeated_at, next_tick_at FROM "{config.schema}".job_definition'
        " WHERE name = %s",
        [name],
    ).fetchone()
    assert row is not None
    return row[0], row[1]


class TestNewIntervalDefinition:
    @pytest.mark.parametrize(
        ("seen_at", "first_tick"),
        [
            (T0 - dt.timedelta(seconds=1), T0),
            (T0, T0),
            (T0 + dt.timedelta(milliseconds=1), T0 + HOUR),
            (T0 + dt.timedelta(minutes=30), T0 + HOUR),
        ],
        ids=["just-before-a-tick", "on-a-tick", "just-after-a-tick", "mid-interval"],
    )
    def test_first_run_is_the_first_tick_at_or_after_it_was_seen_and_runs_are_an_interval_apart(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        seen_at: dt.datetime,
        first_tick: dt.datetime,
    ) -> None:
        """An hourly definition first seen at any phase of its interval first runs at the first tick at or after that moment, then every hour."""
        JobDefinition(
            config, name="hourly", job_function=noop, repeat_interval_ms=HOUR_MS, overlap=True
        ).upsert(db)
        end = seen_at + 3 * HOUR
        simulate(RepeatScheduler(config, interval_ms=TEN_MINUTES_MS), db, seen_at, end)
        jobs = tick_jobs(db, config)
        expected = [first_tick + k * HOUR for k in range(4) if first_tick + k * HOUR <= end]
        assert [tick for tick, _ in jobs] == expected
        run_times = [run_at for _, run_at in jobs]
        assert run_times[0] >= seen_at
        assert all(gap >= HOUR for gap in gaps(run_times)), run_times

    def test_first_pass_before_the_first_tick_plans_it_and_enqueues_nothing(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Seen between two ticks, a definition gets its next tick planned and no job; last_repeated_at stays empty."""
        JobDefinition(config, name="hourly", job_function=noop, repeat_interval_ms=HOUR_MS).upsert(
            db
        )
        result = RepeatScheduler(config, interval_ms=TEN_MINUTES_MS).run_once(
            db, T0 + 59 * MINUTE + dt.timedelta(seconds=59)
        )
        assert result.events == ()
        assert result.next_run_in_s == pytest.approx(1.0)  # wakes for its first tick
        assert tick_jobs(db, config) == []
        assert definition_state(db, config, "hourly") == (None, T0 + HOUR)

    def test_on_the_database_clock_the_first_tick_is_not_before_the_first_pass(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Without an explicit time the database clock decides: the planned first tick is on the grid, not before the pass, and no job is enqueued before it."""
        JobDefinition(config, name="hourly", job_function=noop, repeat_interval_ms=HOUR_MS).upsert(
            db
        )
        before = db.execute("SELECT clock_timestamp()").fetchone()
        RepeatScheduler(config, interval_ms=30_000).run_once(db)
        after = db.execute("SELECT clock_timestamp()").fetchone()
        assert before is not None and after is not None
        last, planned = definition_state(db, config, "hourly")
        assert planned is not None
        assert interval_ticks(HOUR_MS, planned)[0] == planned  # a tick of the hourly grid
        assert before[0] <= planned <= interval_ticks(HOUR_MS, after[0])[1]
        # Only a pass landing exactly on the hour (to the microsecond) would have run it.
        assert (last, tick_jobs(db, config)) == (None, [])

    def test_a_planned_first_tick_is_run_once_by_the_leader_that_takes_over(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """The first tick planned by one orchestrator is kept by the next leader, and enqueued exactly once."""
        other = Config(test_dsn, schema=config.schema)
        try:
            for cfg in (config, other):
                JobDefinition(
                    cfg, name="minutely", job_function=noop, repeat_interval_ms=60_000
                ).upsert(db)
            first = RepeatScheduler(config, interval_ms=30_000)
            second = RepeatScheduler(other, interval_ms=30_000)
            assert first.run_once(db, T0 + dt.timedelta(seconds=10)).events == ()
            assert second.run_once(db, T0 + dt.timedelta(seconds=40)).events == ()
            assert definition_state(db, config, "minutely") == (None, T0 + MINUTE)
            assert len(second.run_once(db, T0 + MINUTE).events) == 1
            assert first.run_once(db, T0 + MINUTE).events == ()
        finally:
            other.close()
        assert [tick for tick, _ in tick_jobs(db, config)] == [T0 + MINUTE]

    def test_a_plan_is_not_written_over_a_row_another_scheduler_changed(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Two schedulers that both read a new definition: the second one's plan, based on what it read, is refused."""
        JobDefinition(config, name="hourly", job_function=noop, repeat_interval_ms=HOUR_MS).upsert(
            db
        )
        plan = config.queries["definition_plan_tick"]
        stale = {"definition": "hourly", "seen_last": None, "seen_next": None}
        assert db.execute(plan, {**stale, "next_tick_at": T0 + HOUR}).fetchall() == [("hourly",)]
        assert db.execute(plan, {**stale, "next_tick_at": T0 + 2 * HOUR}).fetchall() == []
        assert definition_state(db, config, "hourly") == (None, T0 + HOUR)


class TestChangedInterval:
    def test_a_shorter_interval_starts_at_its_first_tick_after_the_change(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """An hourly definition that runs every 10 minutes from 12:35 on next runs at 12:40, not at once for 12:30."""
        old = Config(test_dsn, schema=config.schema)
        try:
            JobDefinition(
                old, name="report", job_function=noop, repeat_interval_ms=HOUR_MS, overlap=True
            ).upsert(db)
            simulate(RepeatScheduler(old, interval_ms=TEN_MINUTES_MS), db, T0, T0 + 30 * MINUTE)
        finally:
            old.close()
        JobDefinition(
            config,
            name="report",
            job_function=noop,
            repeat_interval_ms=TEN_MINUTES_MS,
            overlap=True,
        ).upsert(db)
        changed_at = T0 + 35 * MINUTE
        simulate(RepeatScheduler(config, interval_ms=30_000), db, changed_at, T0 + HOUR)
        jobs = tick_jobs(db, config)
        assert [tick for tick, _ in jobs] == [T0] + [T0 + m * MINUTE for m in (40, 50, 60)]
        run_times = [run_at for _, run_at in jobs]
        assert all(gap >= 10 * MINUTE for gap in gaps(run_times)), run_times

    def test_a_longer_interval_waits_one_new_interval_after_the_last_tick(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """A 10-minute definition that last ran at 12:30 and is hourly from 12:35 on next runs at 14:00, not at 13:00."""
        old = Config(test_dsn, schema=config.schema)
        try:
            JobDefinition(
                old,
                name="report",
                job_function=noop,
                repeat_interval_ms=TEN_MINUTES_MS,
                overlap=True,
            ).upsert(db)
            simulate(RepeatScheduler(old, interval_ms=30_000), db, T0, T0 + 30 * MINUTE)
        finally:
            old.close()
        JobDefinition(
            config, name="report", job_function=noop, repeat_interval_ms=HOUR_MS, overlap=True
        ).upsert(db)
        simulate(
            RepeatScheduler(config, interval_ms=TEN_MINUTES_MS), db, T0 + 35 * MINUTE, T0 + 3 * HOUR
        )
        jobs = tick_jobs(db, config)
        before = [T0 + m * MINUTE for m in (0, 10, 20, 30)]
        assert [tick for tick, _ in jobs] == [*before, T0 + 2 * HOUR, T0 + 3 * HOUR]
        run_times = [run_at for _, run_at in jobs][len(before) - 1 :]
        assert all(gap >= HOUR for gap in gaps(run_times)), run_times

    def test_an_unchanged_interval_keeps_its_schedule_and_coalesces_missed_ticks(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A stored schedule that fits the interval is kept: after downtime the latest missed tick runs at once."""
        definition = JobDefinition(
            config, name="minutely", job_function=noop, repeat_interval_ms=60_000, overlap=True
        )
        definition.upsert(db)
        scheduler = RepeatScheduler(config, interval_ms=30_000)
        scheduler.run_once(db, T0)
        assert planned_tick(definition, T0 + 10 * MINUTE, T0, T0 + MINUTE) is None
        scheduler.run_once(db, T0 + 10 * MINUTE + dt.timedelta(seconds=5))
        assert [tick for tick, _ in tick_jobs(db, config)] == [T0, T0 + 10 * MINUTE]
