"""Repeatable jobs: one job per tick, exactly once.

What it does: for every repeatable definition registered in *this* process
(a definition deleted from the code is therefore never scheduled again), it
computes the latest tick at or before ``now`` and enqueues its job when that
tick is due and was not already handled:

* interval definitions tick on multiples of ``repeat_interval_ms`` since the
  Unix epoch, so every orchestrator computes the same ticks;
* cron definitions tick on their croniter schedule, read in ``cron_timezone``
  (UTC by default; a sixth field gives seconds);
* a new definition's first tick is the first tick at or after the moment a
  scheduler first sees it (on the database clock), never one before: an
  hourly job deployed at 10:59:59 first runs at 11:00:00, then at 12:00:00.
  That first tick is written to ``next_tick_at`` (``last_repeated_at`` stays
  NULL until a tick is handled);
* two ticks of an interval definition are at least one interval apart, also
  when the interval changes: the first tick of the new interval is the first
  one at or after both the moment the change is seen and one new interval
  after the last tick (docs/decisions/0008);
* ticks missed while no orchestrator ran coalesce into the latest one;
* with ``overlap=False`` (the default) a tick whose previous tick's job is
  unfinished is skipped, with an event;
* a tick of a paused definition is skipped (handled, no job), with an event,
  and counted as ``paused``: it does not run late once the definition is resumed.

Exactly once: the definition row is locked and ``last_repeated_at`` checked
and set in the same statement, and the unique ``(definition, tick_at)`` index
refuses a second job for a tick even from a second leader. A planned first
tick is written only if the row still holds what this pass read, so two
schedulers that both see a new definition cannot plan past each other's tick.

Options: ``repeat_interval_ms`` of the orchestrator (default 30 000) bounds the
sleep; the service wakes at the earliest next tick when that is sooner.
Events: OrchestratorJobScheduled, OrchestratorTickSkipped.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any, ClassVar

import psycopg
from croniter import croniter

from orchestra import events
from orchestra._definition import JobDefinition
from orchestra._orchestrator._service import RunResult, Service

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def interval_ticks(period_ms: int, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The latest tick at or before ``now`` and the one after, for an interval."""
    elapsed_ms = (now - EPOCH) // dt.timedelta(milliseconds=1)
    tick = EPOCH + dt.timedelta(milliseconds=elapsed_ms - elapsed_ms % period_ms)
    return tick, tick + dt.timedelta(milliseconds=period_ms)


def cron_ticks(
    expression: str, timezone: str | None, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """The latest cron tick at or before ``now`` and the next one, in UTC."""
    zone = zoneinfo.ZoneInfo(timezone or "UTC")
    local = now.astimezone(zone)
    # croniter's get_prev is strictly before its start: start just after now
    # so that a tick falling exactly on now counts as reached.
    previous = croniter(expression, local + dt.timedelta(microseconds=1)).get_prev(dt.datetime)
    following = croniter(expression, local).get_next(dt.datetime)
    return previous.astimezone(dt.UTC), following.astimezone(dt.UTC)


def ticks(definition: JobDefinition[Any], now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The current and next tick of a repeatable definition."""
    if definition.cron is not None:
        return cron_ticks(definition.cron, definition.cron_timezone, now)
    assert definition.repeat_interval_ms is not None
    return interval_ticks(definition.repeat_interval_ms, now)


def first_tick_at_or_after(definition: JobDefinition[Any], moment: dt.datetime) -> dt.datetime:
    """The first tick of ``definition`` at or after ``moment``."""
    tick, following = ticks(definition, moment)
    return tick if tick == moment else following


def planned_tick(
    definition: JobDefinition[Any],
    now: dt.datetime,
    last: dt.datetime | None,
    planned: dt.datetime | None,
) -> dt.datetime | None:
    """The first tick to plan when the stored plan does not fit; None when it does.

    ``last`` and ``planned`` are the definition's ``last_repeated_at`` and
    ``next_tick_at``. A definition no scheduler has seen yet gets the first
    tick at or after ``now``. An interval definition also gets a new plan when
    the stored one is not a tick of its interval, comes sooner than one
    interval after ``last``, or later than needed: its interval changed (or it
    was a cron definition), and its next tick must be at or after both ``now``
    and one new interval after ``last``. A cron definition that already ran
    keeps its stored state: its ticks after ``last`` are due.
    """
    period_ms = definition.repeat_interval_ms
    if period_ms is None:
        if last is not None or planned is not None:
            return None
        return first_tick_at_or_after(definition, now)
    period = dt.timedelta(milliseconds=period_ms)
    earliest = first_tick_at_or_after(definition, now if last is None else max(now, last + period))
    fits = (
        planned is not None
        and (planned - EPOCH) % period == dt.timedelta(0)
        and (last is None or planned >= last + period)
        and planned <= earliest
    )
    return None if fits else earliest


class RepeatScheduler(Service):
    """Enqueue the jobs of repeat and cron ticks."""

    name: ClassVar[str] = "scheduler"

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Enqueue the current tick of every due repeatable definition."""
        repeatable = [d for d in self.config.definitions.values() if d.is_repeatable]
        if not repeatable:
            return RunResult(self.name, {"scheduled": 0, "skipped": 0, "paused": 0})
        if now is None:
            row = conn.execute(self.config.queries["clock_now"]).fetchone()
            assert row is not None
            now = row[0]
        assert now is not None
        state: dict[str, tuple[dt.datetime | None, dt.datetime | None]] = {
            name: (last, planned)
            for name, last, planned in conn.execute(
                self.config.queries["definition_repeat_state"],
                {"names": [d.name for d in repeatable]},
            ).fetchall()
        }
        emitted: list[events.Event] = []
        scheduled = skipped = paused = 0
        soonest = now + dt.timedelta(milliseconds=self.interval_ms)
        for definition in repeatable:
            tick, following = ticks(definition, now)
            soonest = min(soonest, following)
            last, planned = state.get(definition.name, (None, None))
            plan = planned_tick(definition, now, last, planned)
            if plan is not None:
                if not self._plan(conn, definition.name, plan, last, planned):
                    continue  # another scheduler changed the row since it was read
                planned = plan
            # A planned tick gates interval definitions, and cron definitions
            # until their first tick; after that a cron tick is due once it is
            # later than last_repeated_at (checked by job_insert_tick).
            if planned is not None and (last is None or definition.cron is None) and tick < planned:
                continue
            params = {"definition": definition.name, "tick_at": tick, "next_tick_at": following}
            row = conn.execute(
                self.config.queries["job_insert_tick"],
                {
                    **params,
                    "now": now,
                    "overlap": definition.overlap,
                    "payload": definition._encode(None),
                    "notify_channel": self.config.notify_channel,
                },
            ).fetchone()
            assert row is not None
            job_id, due, busy, was_paused = row[0], row[1], row[2], row[4]
            if job_id is not None:
                scheduled += 1
                emitted.append(
                    events.OrchestratorJobScheduled(
                        **self.origin.header(),
                        job_id=job_id,
                        definition=definition.name,
                        tick_at=tick,
                    )
                )
            elif due and was_paused:
                paused += 1
                emitted.append(
                    events.OrchestratorTickSkipped(
                        **self.origin.header(),
                        definition=definition.name,
                        tick_at=tick,
                        reason="paused",
                    )
                )
            elif due and busy and not definition.overlap:
                skipped += 1
                emitted.append(
                    events.OrchestratorTickSkipped(
                        **self.origin.header(),
                        definition=definition.name,
                        tick_at=tick,
                        reason="overlap",
                    )
                )
        wait = max(0.0, (soonest - now).total_seconds())
        return RunResult(
            self.name,
            {"scheduled": scheduled, "skipped": skipped, "paused": paused},
            tuple(emitted),
            wait,
        )

    def _plan(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        tick: dt.datetime,
        last: dt.datetime | None,
        planned: dt.datetime | None,
    ) -> bool:
        """Store ``tick`` as the definition's next tick if its row still holds what was read."""
        row = conn.execute(
            self.config.queries["definition_plan_tick"],
            {"definition": name, "next_tick_at": tick, "seen_last": last, "seen_next": planned},
        ).fetchone()
        return row is not None
