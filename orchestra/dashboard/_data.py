"""What the dashboard shows, as plain data shared by the HTML pages and the JSON API.

Jobs and definitions come from the management API (``config.jobs_async``);
what it does not offer (counts by channel, throughput, workers, the leader,
dependents) comes from the read-only queries of ``orchestra/sql/monitoring.sql``,
and what holds back vacuum from ``health_vacuum_horizon`` (the same file).
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import psycopg
from croniter import croniter
from psycopg.rows import dict_row

from orchestra._jobs import STATUSES, Attempt, DefinitionInfo, Job
from orchestra._orchestrator._gauges import (
    MONITOR_HINT,
    TRANSACTION_WARNING_S_DEFAULT,
    VacuumHorizon,
)
from orchestra._schema_names import LEASE_NAME

if TYPE_CHECKING:
    from orchestra._config import Config

#: A daemon whose heartbeat is older than this is shown as silent (the
#: orchestrator's default ``worker_stale_threshold_ms``).
WORKER_STALE_MS = 60_000
#: Most dependencies and dependents listed on a job's page, each.
LINKS_LIMIT = 200
#: The overview warns (a banner) when the transaction holding the oldest
#: snapshot is at least this old: the default of `orchestra health`.
TRANSACTION_WARNING_S = TRANSACTION_WARNING_S_DEFAULT
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _json_default(value: object) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(document: object, *, indent: int | None = None) -> str:
    """JSON text of ``document``; datetimes as ISO 8601."""
    return json.dumps(document, default=_json_default, ensure_ascii=False, indent=indent)


def _serialize(_instance: Any, _field: Any, value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def plain(value: Job | Attempt | DefinitionInfo) -> dict[str, Any]:
    """An attrs value as JSON-able data (datetimes in ISO 8601)."""
    data = attrs.asdict(value, value_serializer=_serialize)
    if isinstance(value, DefinitionInfo):
        data["counts"] = dict(value.counts)
    return data


def pretty(value: Any) -> str:
    """A payload or result as indented JSON for people."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


# -- the overview ---------------------------------------------------------------------


async def _rows(
    conn: psycopg.AsyncConnection[Any], config: Config, query: str, params: Mapping[str, Any]
) -> list[Any]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(config.queries[query], params)
        return list(await cursor.fetchall())


def database_health(horizon: VacuumHorizon, schema: str, threshold_s: float) -> dict[str, Any]:
    """The overview's ``database`` section: what holds back vacuum, the job table's rows.

    ``warning`` is the banner's text when the oldest transaction is at least
    ``threshold_s`` old, else None; ``hint`` says to grant pg_monitor when that
    transaction's age is hidden from the dashboard's role.
    """
    hidden = horizon.oldest is not None and horizon.oldest.hidden
    return {
        **horizon.as_dict(),
        "transaction_warning_s": threshold_s,
        "warning": horizon.warning(threshold_s, schema),
        "hint": MONITOR_HINT if hidden else None,
    }


async def overview(config: Config) -> dict[str, Any]:
    """Counts by status and channel, throughput, daemons, the leader and vacuum's horizon."""
    async with config.connection_async() as conn:
        now_rows = await _rows(conn, config, "clock_now", {})
        count_rows = await _rows(conn, config, "dashboard_job_counts", {})
        bucket_rows = await _rows(conn, config, "dashboard_throughput", {})
        worker_rows = await _rows(conn, config, "dashboard_workers", {})
        leader_rows = await _rows(conn, config, "leader_get", {"name": LEASE_NAME})
        vacuum_rows = await _rows(conn, config, "health_vacuum_horizon", {"schema": config.schema})
    now: dt.datetime = now_rows[0]["clock_timestamp"]

    by_status = dict.fromkeys(STATUSES, 0)
    by_channel: dict[str, dict[str, int]] = {}
    for row in count_rows:
        n = int(row["n"])
        by_status[row["status"]] = by_status.get(row["status"], 0) + n
        by_channel.setdefault(row["channel"], dict.fromkeys(STATUSES, 0))[row["status"]] = n

    leader = leader_rows[0] if leader_rows else None
    workers = []
    for row in worker_rows:
        # The lease holder is "host:pid:<daemon number in its process>:<random>".
        prefix = f"{row['host']}:{row['pid']}:"
        holds_lease = bool(
            leader
            and leader["live"]
            and row["role"] == "orchestrator"
            and leader["holder"].startswith(prefix)
        )
        workers.append(
            {
                "id": row["id"],
                "name": row["name"],
                "role": row["role"],
                "host": row["host"],
                "pid": row["pid"],
                "channel": row["channel"],
                "concurrency": row["concurrency"],
                "running": int(row["running"]),
                "started_at": row["started_at"],
                "heartbeat_at": row["heartbeat_at"],
                "heartbeat_age_ms": int(row["heartbeat_age_ms"]),
                "live": int(row["heartbeat_age_ms"]) < WORKER_STALE_MS,
                "leader": holds_lease,
            }
        )
    return {
        "now": now,
        "counts": {
            "total": sum(by_status.values()),
            "by_status": by_status,
            "by_channel": by_channel,
        },
        "throughput": {
            "bucket_seconds": 60,
            "buckets": [
                {
                    "minute": row["minute"],
                    "succeeded": int(row["succeeded"]),
                    "failed": int(row["failed"]),
                    "cancelled": int(row["cancelled"]),
                }
                for row in bucket_rows
            ],
        },
        "workers": workers,
        "leader": None
        if leader is None
        else {
            "holder": leader["holder"],
            "elected_at": leader["elected_at"],
            "expires_at": leader["expires_at"],
            "live": bool(leader["live"]),
        },
        "database": database_health(
            VacuumHorizon.from_row(vacuum_rows[0]), config.schema, TRANSACTION_WARNING_S
        ),
    }


async def job_links(config: Config, job_id: int) -> dict[str, list[dict[str, Any]]]:
    """The jobs ``job_id`` requires and the jobs that require it, with their status."""
    async with config.connection_async() as conn:
        rows = await _rows(
            conn, config, "dashboard_job_links", {"id": job_id, "limit": LINKS_LIMIT}
        )
    links: dict[str, list[dict[str, Any]]] = {"requires": [], "required_by": []}
    for row in rows:
        links[row["relation"]].append(
            {"id": row["id"], "definition": row["definition"], "status": row["status"]}
        )
    return links


# -- definitions: the next tick ------------------------------------------------------


def next_tick(
    info: DefinitionInfo, now: dt.datetime, timezone: str | None = None
) -> tuple[dt.datetime | None, bool]:
    """When the definition's next repeat or cron tick is due, and whether it was computed here.

    The orchestrator stores ``next_tick_at`` as it schedules; when that is
    missing or past (no orchestrator ran since), it is computed from the cron
    expression (read in ``timezone``, UTC unless the definition is loaded) or
    the interval (ticks on multiples of it since the epoch, as the scheduler does).
    """
    if info.next_tick_at is not None and info.next_tick_at > now:
        return info.next_tick_at, False
    if info.cron is not None:
        try:
            zone = zoneinfo.ZoneInfo(timezone or "UTC")
            following = croniter(info.cron, now.astimezone(zone)).get_next(dt.datetime)
        except (ValueError, KeyError, zoneinfo.ZoneInfoNotFoundError):
            return None, True
        return following.astimezone(dt.UTC), True
    if info.repeat_interval_ms:
        elapsed_ms = (now - EPOCH) // dt.timedelta(milliseconds=1)
        period = info.repeat_interval_ms
        return EPOCH + dt.timedelta(milliseconds=elapsed_ms - elapsed_ms % period + period), True
    return None, False


def definition_document(
    info: DefinitionInfo, now: dt.datetime, timezone: str | None = None
) -> dict[str, Any]:
    """A definition for the JSON API: its stored fields plus the expected next tick."""
    data = plain(info)
    tick, computed = next_tick(info, now, timezone)
    data["expected_next_tick_at"] = None if tick is None else tick.isoformat()
    data["expected_next_tick_computed"] = computed
    return data


# -- the throughput chart --------------------------------------------------------------


@attrs.frozen
class Bar:
    """One minute of the chart: stacked rectangles, bottom to top, and a tooltip."""

    x: float
    width: float
    parts: tuple[tuple[str, float, float], ...]  # (css class, y, height)
    title: str


@attrs.frozen
class Chart:
    """Geometry of the inline SVG throughput chart (drawn by the overview template)."""

    width: int
    height: int
    plot_top: int
    plot_bottom: int
    bars: tuple[Bar, ...]
    peak: int
    total: Mapping[str, int]
    ticks: tuple[tuple[float, str], ...]  # (x, label) along the time axis


CHART_WIDTH = 720
CHART_HEIGHT = 170
_PLOT_LEFT, _PLOT_RIGHT, _PLOT_TOP, _PLOT_BOTTOM = 36, 712, 10, 146
_SERIES = (("succeeded", "bar-ok"), ("failed", "bar-failed"), ("cancelled", "bar-cancelled"))


def chart(buckets: Sequence[Mapping[str, Any]]) -> Chart:
    """Stacked bars of finalized jobs per minute; the y axis tops at the busiest minute."""
    count = max(1, len(buckets))
    slot = (_PLOT_RIGHT - _PLOT_LEFT) / count
    peak = max([sum(int(b[name]) for name, _ in _SERIES) for b in buckets] or [0])
    scale = (_PLOT_BOTTOM - _PLOT_TOP) / peak if peak else 0.0
    bars = []
    for index, bucket in enumerate(buckets):
        y = float(_PLOT_BOTTOM)
        parts = []
        for name, css in _SERIES:
            height = int(bucket[name]) * scale
            if height > 0:
                y -= height
                parts.append((css, round(y, 2), round(height, 2)))
        minute: dt.datetime = bucket["minute"]
        numbers = ", ".join(f"{int(bucket[name])} {name}" for name, _ in _SERIES)
        bars.append(
            Bar(
                x=round(_PLOT_LEFT + index * slot + slot * 0.1, 2),
                width=round(slot * 0.8, 2),
                parts=tuple(parts),
                title=f"{minute.astimezone(dt.UTC):%H:%M} UTC: {numbers}",
            )
        )
    ticks = []
    for minutes_ago in (60, 45, 30, 15, 0):
        index = count - minutes_ago if minutes_ago else count - 1
        x = _PLOT_LEFT + max(0, index) * slot + slot / 2
        ticks.append((round(x, 2), "now" if minutes_ago == 0 else f"-{minutes_ago} min"))
    total = {name: sum(int(b[name]) for b in buckets) for name, _ in _SERIES}
    return Chart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        plot_top=_PLOT_TOP,
        plot_bottom=_PLOT_BOTTOM,
        bars=tuple(bars),
        peak=peak,
        total=total,
        ticks=tuple(ticks),
    )
