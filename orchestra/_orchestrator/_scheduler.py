"""Repeatable jobs: one job per tick, exactly once (F1-F8, DESIGN §4.6).

What it does: for every repeatable definition registered in *this* process
(a definition deleted from the code is therefore never scheduled again: G9,
seed bug 9), it computes the latest tick at or before ``now`` and enqueues its
job unless that tick was already handled:

* interval definitions tick on multiples of ``repeat_interval_ms`` since the
  Unix epoch, so every orchestrator computes the same ticks; the first pass
  enqueues at once (F1);
* cron definitions tick on their croniter schedule, read in ``cron_timezone``
  (UTC by default; a sixth field gives seconds); a new cron definition waits
  for its next tick rather than running the last one retroactively;
* ticks missed while no orchestrator ran coalesce into the latest one;
* with ``overlap=False`` (the default) a tick whose previous tick's job is
  unfinished is skipped, with an event.

Exactly once: the definition row is locked and ``last_repeated_at`` checked
and set in the same statement, and the unique ``(definition, tick_at)`` index
refuses a second job for a tick even from a second leader.

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
from orchestra._orchestrator._service import Emission, RunResult, Service

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


class RepeatScheduler(Service):
    """Enqueue the jobs of repeat and cron ticks."""

    name: ClassVar[str] = "scheduler"

    def run_once(self, conn: psycopg.Connection[Any], now: dt.datetime | None = None) -> RunResult:
        """Enqueue the current tick of every due repeatable definition."""
        repeatable = [d for d in self.config.definitions.values() if d.is_repeatable]
        if not repeatable:
            return RunResult(self.name, {"scheduled": 0, "skipped": 0})
        if now is None:
            row = conn.execute(self.config.queries["clock_now"]).fetchone()
            assert row is not None
            now = row[0]
        assert now is not None
        state = dict(
            conn.execute(
                self.config.queries["definition_repeat_state"],
                {"names": [d.name for d in repeatable]},
            ).fetchall()
        )
        emissions: list[Emission] = []
        scheduled = skipped = 0
        soonest = now + dt.timedelta(milliseconds=self.interval_ms)
        for definition in repeatable:
            tick, following = ticks(definition, now)
            soonest = min(soonest, following)
            params = {"definition": definition.name, "tick_at": tick, "next_tick_at": following}
            if definition.cron is not None and state.get(definition.name) is None:
                conn.execute(self.config.queries["definition_mark_tick"], params)
                continue
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
            job_id, due, busy = row[0], row[1], row[2]
            if job_id is not None:
                scheduled += 1
                emissions.append(
                    Emission(
                        events.OrchestratorJobScheduled,
                        {
                            "job_id": job_id,
                            "definition": definition.name,
                            "tick_at": tick,
                        },
                    )
                )
            elif due and busy and not definition.overlap:
                skipped += 1
                emissions.append(
                    Emission(
                        events.OrchestratorTickSkipped,
                        {
                            "definition": definition.name,
                            "tick_at": tick,
                            "reason": "overlap",
                        },
                    )
                )
        wait = max(0.0, (soonest - now).total_seconds())
        return RunResult(
            self.name, {"scheduled": scheduled, "skipped": skipped}, tuple(emissions), wait
        )
