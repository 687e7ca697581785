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
from typing import Any

import attrs
import psycopg
from croniter import croniter
from psycopg.rows import dict_row

from orchestra._config import Config
from orchestra._orchestrator._gauges import (
    MONITOR_HINT,
    TRANSACTION_WARNING_S_DEFAULT,
    VacuumHorizon,
)
from orchestra._records import (
    STATUSES,
    Attempt,
    DefinitionInfo,
    Job,
    JobGraph,
    job_from_row,
    progress_fraction,
)
from orchestra._schema_names import LEASE_NAME

#: A daemon whose heartbeat is older than this is shown as silent (the
#: orchestrator's default ``worker_stale_threshold_ms``).
WORKER_STALE_MS = 60_000
#: Most dependencies and dependents listed on a job's page, each.
LINKS_LIMIT = 200
#: Most jobs of a job's workflow graph in each direction (upstream, downstream).
GRAPH_LIMIT = 200
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


def progress_view(progress: Any) -> dict[str, Any] | None:
    """How a page shows a job's progress: a bar when the value says how far (a
    fraction, or a dict with ``done`` and ``total``), and a label; None when the
    job reported none."""
    if progress is None:
        return None
    fraction = progress_fraction(progress)
    if isinstance(progress, Mapping) and fraction is not None:
        label = f"{progress['done']:g} of {progress['total']:g} ({fraction:.0%})"
    elif fraction is not None:
        label = f"{fraction:.0%}"
    else:
        label = json.dumps(progress, ensure_ascii=False)
    return {"fraction": fraction, "label": label}


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
    """Counts by status and channel, paused channels, throughput, daemons, the leader and
    vacuum's horizon."""
    async with config.connection_async() as conn:
        now_rows = await _rows(conn, config, "clock_now", {})
        count_rows = await _rows(conn, config, "dashboard_job_counts", {})
        bucket_rows = await _rows(conn, config, "dashboard_throughput", {})
        worker_rows = await _rows(conn, config, "dashboard_workers", {})
        paused_rows = await _rows(conn, config, "manage_channel_paused", {})
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
                "channels": row["channels"],
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
        "paused_channels": [row["channel"] for row in paused_rows],
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


# -- a job's workflow graph ------------------------------------------------------------

#: The drawing's box of one job, the gaps between boxes, and the margin, in pixels.
GRAPH_NODE_W, GRAPH_NODE_H = 168, 40
GRAPH_GAP_X, GRAPH_GAP_Y, GRAPH_PAD = 56, 10, 8
#: Characters of a definition's name that fit in a box.
GRAPH_NAME_CHARS = 20


async def job_graph(config: Config, job_id: int) -> JobGraph:
    """The jobs ``job_id`` depends on and those that depend on it (at most
    GRAPH_LIMIT each way)."""
    return await config.jobs_async.graph(job_id, limit=GRAPH_LIMIT)


def graph_document(graph: JobGraph) -> dict[str, Any]:
    """The graph as the JSON API gives it."""
    return {
        "limit": graph.limit,
        "truncated": graph.truncated,
        "upstream_truncated": graph.upstream_truncated,
        "downstream_truncated": graph.downstream_truncated,
        "nodes": [attrs.asdict(node) for node in graph.nodes],
    }


def graph_drawing(graph: JobGraph) -> dict[str, Any] | None:
    """Geometry of the job page's drawing of ``graph``, or None when the job stands alone.

    Layered left to right by :attr:`GraphNode.depth` (a job right of every
    job it depends on), each layer a column of boxes by id; an edge is a
    curve from a dependency's right side to its dependent's left side. The
    template draws it as inline SVG; every color comes from the stylesheet's
    variables, so the dark theme applies.
    """
    if len(graph.nodes) < 2:
        return None
    layers = sorted({node.depth for node in graph.nodes})
    column = {depth: index for index, depth in enumerate(layers)}
    rows: dict[int, int] = {}
    boxes: dict[int, dict[str, Any]] = {}
    for node in sorted(graph.nodes, key=lambda n: (n.depth, n.id)):
        row = rows.get(node.depth, 0)
        rows[node.depth] = row + 1
        name = node.definition or "no longer kept"
        if len(name) > GRAPH_NAME_CHARS:
            name = name[: GRAPH_NAME_CHARS - 1] + "…"
        status = node.status or "gone"
        boxes[node.id] = {
            "id": node.id,
            "x": GRAPH_PAD + column[node.depth] * (GRAPH_NODE_W + GRAPH_GAP_X),
            "y": GRAPH_PAD + row * (GRAPH_NODE_H + GRAPH_GAP_Y),
            "name": name,
            "status": status,
            "current": node.side == "self",
            # "#12 fetch: succeeded", not "job 12 ...": the page's lists of
            # dependencies already have links named "job 12".
            "title": f"#{node.id} {node.definition or '(no longer kept)'}: {status}",
        }
    edges = []
    for node in graph.nodes:
        target = boxes[node.id]
        for dependency in node.depends_on:
            source = boxes[dependency]
            x1, y1 = source["x"] + GRAPH_NODE_W, source["y"] + GRAPH_NODE_H // 2
            x2, y2 = target["x"], target["y"] + GRAPH_NODE_H // 2
            bend = (x2 - x1) // 2
            edges.append(f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}")
    return {
        "width": 2 * GRAPH_PAD + len(layers) * GRAPH_NODE_W + (len(layers) - 1) * GRAPH_GAP_X,
        "height": 2 * GRAPH_PAD
        + max(rows.values()) * GRAPH_NODE_H
        + (max(rows.values()) - 1) * GRAPH_GAP_Y,
        "node_w": GRAPH_NODE_W,
        "node_h": GRAPH_NODE_H,
        "nodes": list(boxes.values()),
        "edges": edges,
        "label": (
            f"Dependency graph of job {graph.job_id}: {len(graph.upstream)} job(s) upstream, "
            f"{len(graph.downstream)} downstream"
        ),
    }


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


# -- charts: geometry of the inline SVGs the templates draw ----------------------------


@attrs.frozen
class Box:
    """A chart's viewBox and the plot area inside it (room for labels around)."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int


@attrs.frozen
class Bar:
    """One bucket of a bar chart: stacked rectangles, bottom to top, and a tooltip."""

    x: float
    width: float
    parts: tuple[tuple[str, float, float], ...]  # (css class, y, height)
    title: str


@attrs.frozen
class Chart:
    """Geometry of an inline SVG bar chart (drawn by the ``bar_chart`` macro)."""

    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bars: tuple[Bar, ...]
    peak: int
    total: Mapping[str, int]
    ticks: tuple[tuple[float, str, str], ...]  # (x, label, text-anchor) along the time axis
    label: str  # what the chart shows, for screen readers


@attrs.frozen
class Line:
    """One series of a line chart: polylines (broken where a bucket has no value) and dots."""

    css: str
    name: str
    segments: tuple[str, ...]  # SVG polyline points, "x,y x,y ..."
    dots: tuple[tuple[float, float, str], ...]  # (x, y, tooltip)


@attrs.frozen
class LineChart:
    """Geometry of an inline SVG line chart (drawn by the ``line_chart`` macro)."""

    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    lines: tuple[Line, ...]
    peak_label: str
    ticks: tuple[tuple[float, str, str], ...]
    label: str


CHART_WIDTH = 720
CHART_HEIGHT = 170
OVERVIEW_BOX = Box(CHART_WIDTH, CHART_HEIGHT, 36, 712, 10, 146)
#: One definition's chart on the charts page (several side by side).
SMALL_BOX = Box(360, 120, 34, 352, 8, 96)
WAIT_BOX = Box(CHART_WIDTH, 200, 84, 712, 12, 172)
_SERIES = (("succeeded", "bar-ok"), ("failed", "bar-failed"), ("cancelled", "bar-cancelled"))
_TICK_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _ago_label(seconds: int) -> str:
    if seconds == 0:
        return "now"
    if seconds < 7200:
        return f"-{seconds // 60} min"
    return f"-{seconds / 3600:g} h"


def _ticks(box: Box, count: int, bucket_s: int) -> tuple[tuple[float, str, str], ...]:
    """Labels at the start, quarters and end of the time axis ("-60 min" ... "now").

    The first and last are anchored at their outer end, so that they stay
    inside the chart however large a small screen draws them.
    """
    slot = (box.right - box.left) / count
    ticks = []
    for fraction in _TICK_FRACTIONS:
        index = min(count - 1, round(fraction * count))
        ago = 0 if fraction == 1.0 else round((1 - fraction) * count) * bucket_s
        x = box.left + index * slot + slot / 2
        anchor = "middle"
        if fraction == 0.0:
            x, anchor = box.left, "start"
        elif fraction == 1.0:
            x, anchor = box.right, "end"
        ticks.append((round(x, 2), _ago_label(ago), anchor))
    return tuple(ticks)


def _when(start: dt.datetime, bucket_s: int) -> str:
    start = start.astimezone(dt.UTC)
    if bucket_s <= 60:
        return f"{start:%H:%M} UTC"
    end = start + dt.timedelta(seconds=bucket_s)
    return f"{start:%H:%M} to {end:%H:%M} UTC"


def bar_chart(
    buckets: Sequence[Mapping[str, Any]],
    *,
    box: Box = OVERVIEW_BOX,
    bucket_s: int = 60,
    time_key: str = "minute",
    label: str = "Jobs finalized per minute",
) -> Chart:
    """Stacked bars of finalized jobs per bucket; the y axis tops at the busiest bucket.

    Each bucket maps ``time_key`` to its start and ``succeeded``, ``failed``
    and ``cancelled`` to counts.
    """
    count = max(1, len(buckets))
    slot = (box.right - box.left) / count
    peak = max([sum(int(b[name]) for name, _ in _SERIES) for b in buckets] or [0])
    scale = (box.bottom - box.top) / peak if peak else 0.0
    bars = []
    for index, bucket in enumerate(buckets):
        y = float(box.bottom)
        parts = []
        for name, css in _SERIES:
            height = int(bucket[name]) * scale
            if height > 0:
                y -= height
                parts.append((css, round(y, 2), round(height, 2)))
        numbers = ", ".join(f"{int(bucket[name])} {name}" for name, _ in _SERIES)
        bars.append(
            Bar(
                x=round(box.left + index * slot + slot * 0.1, 2),
                width=round(slot * 0.8, 2),
                parts=tuple(parts),
                title=f"{_when(bucket[time_key], bucket_s)}: {numbers}",
            )
        )
    total = {name: sum(int(b[name]) for b in buckets) for name, _ in _SERIES}
    summary = ", ".join(f"{total[name]} {name}" for name, _ in _SERIES)
    return Chart(
        width=box.width,
        height=box.height,
        plot_left=box.left,
        plot_right=box.right,
        plot_top=box.top,
        plot_bottom=box.bottom,
        bars=tuple(bars),
        peak=peak,
        total=total,
        ticks=_ticks(box, count, bucket_s),
        label=f"{label}: {summary}",
    )


def chart(buckets: Sequence[Mapping[str, Any]]) -> Chart:
    """The overview's chart: stacked bars of finalized jobs per minute over the last hour."""
    return bar_chart(buckets, label="Jobs finalized per minute over the last hour")


def wait_label(ms: int | None) -> str:
    """A queue wait for people: 850 ms, 12 s, 4.5 min, 2.1 h."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.3g} s"
    if ms < 7_200_000:
        return f"{ms / 60_000:.3g} min"
    return f"{ms / 3_600_000:.3g} h"


_WAIT_SERIES = (("p50_ms", "line-p50", "median"), ("p95_ms", "line-p95", "95th percentile"))


def wait_chart(
    buckets: Sequence[Mapping[str, Any]], *, bucket_s: int, box: Box = WAIT_BOX
) -> LineChart:
    """Lines of the median and 95th percentile queue wait per bucket (gaps: no job started).

    Each bucket maps ``start`` to its start, ``started`` to the jobs that
    started in it, and ``p50_ms``/``p95_ms`` to waits (None when none started).
    """
    count = max(1, len(buckets))
    slot = (box.right - box.left) / count
    peak = max([int(b[key]) for b in buckets for key, _, _ in _WAIT_SERIES if b[key]] or [0])
    scale = (box.bottom - box.top) / peak if peak else 0.0
    lines = []
    for key, css, name in _WAIT_SERIES:
        segments: list[str] = []
        current: list[str] = []
        dots = []
        for index, bucket in enumerate(buckets):
            value = bucket[key]
            if value is None:
                if current:
                    segments.append(" ".join(current))
                    current = []
                continue
            x = round(box.left + index * slot + slot / 2, 2)
            y = round(box.bottom - int(value) * scale, 2)
            current.append(f"{x},{y}")
            dots.append(
                (
                    x,
                    y,
                    f"{_when(bucket['start'], bucket_s)}: {name} {wait_label(int(value))} "
                    f"({bucket['started']} started)",
                )
            )
        if current:
            segments.append(" ".join(current))
        lines.append(Line(css=css, name=name, segments=tuple(segments), dots=tuple(dots)))
    started = sum(int(b["started"]) for b in buckets)
    return LineChart(
        width=box.width,
        height=box.height,
        plot_left=box.left,
        plot_right=box.right,
        plot_top=box.top,
        plot_bottom=box.bottom,
        lines=tuple(lines),
        peak_label=wait_label(peak) if peak else "0",
        ticks=_ticks(box, count, bucket_s),
        label=f"Queue wait of the {started} jobs started, median and 95th percentile per bucket",
    )


def activity_charts(data: Mapping[str, Any]) -> dict[str, Any]:
    """The charts page's geometry from :func:`activity`'s data.

    One bar chart per definition (the :data:`CHART_DEFINITIONS_MAX` busiest),
    and the queue wait's line chart.
    """
    since: dt.datetime = data["since"]
    bucket_s: int = data["bucket_seconds"]
    starts = [since + dt.timedelta(seconds=n * bucket_s) for n in range(CHART_BUCKETS)]
    per_definition = []
    for entry in data["definitions"][:CHART_DEFINITIONS_MAX]:
        buckets = [
            {"start": start, **{name: entry[name][n] for name in _OUTCOMES}}
            for n, start in enumerate(starts)
        ]
        drawn = bar_chart(
            buckets,
            box=SMALL_BOX,
            bucket_s=bucket_s,
            time_key="start",
            label=f"Jobs of {entry['definition']} finalized per {wait_label(bucket_s * 1000)}",
        )
        totals = entry["totals"]
        finished = totals["succeeded"] + totals["failed"]
        rate = 100 * totals["failed"] / finished if finished else None
        per_definition.append(
            {"name": entry["definition"], "chart": drawn, "totals": totals, "failure_rate": rate}
        )
    return {
        "definitions": per_definition,
        "hidden": len(data["definitions"]) - len(per_definition),
        "wait": wait_chart(data["wait"]["buckets"], bucket_s=bucket_s),
    }


# -- search and selections ------------------------------------------------------------

#: A search looks for its text among this many of the newest jobs of each table
#: (unfinished and finished); a job id is found whatever its age.
SEARCH_WINDOW = 10_000
#: Longest search text accepted.
SEARCH_TEXT_MAX = 200
#: Largest id a job can have (PostgreSQL's bigint).
JOB_ID_MAX = 2**63 - 1


def like_pattern(text: str) -> str:
    r"""An ILIKE pattern matching ``text`` anywhere; its ``\``, ``%`` and ``_`` are literal."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_id(text: str) -> int | None:
    """The job id ``text`` names (ASCII digits, in the bigint range), else None."""
    stripped = text.strip().removeprefix("#")
    if not stripped.isascii() or not stripped.isdigit() or len(stripped) > 19:
        return None
    number = int(stripped)
    return number if 1 <= number <= JOB_ID_MAX else None


async def search_jobs(
    config: Config,
    text: str,
    *,
    statuses: Sequence[str],
    definition: str | None,
    channel: str | None,
    limit: int,
    offset: int,
    order: str,
    tag: str | None = None,
) -> tuple[list[Job], int]:
    """A page of the jobs whose id is ``text`` or whose payload or last error contains it.

    The text is looked for among the :data:`SEARCH_WINDOW` newest jobs of
    each table; returns the page and how many were found in all.
    """
    params = {
        "pattern": like_pattern(text),
        "id": search_id(text),
        "window": SEARCH_WINDOW,
        "statuses": list(statuses or STATUSES),
        "definition": definition,
        "channel": channel,
        "tag": tag,
        "order": order,
        "limit": limit,
        "offset": offset,
    }
    async with config.connection_async() as conn:
        rows = await _rows(conn, config, "dashboard_job_search", params)
    total = int(rows[0]["total"]) if rows else 0
    return [job_from_row(row) for row in rows if row["id"] is not None], total


async def jobs_by_ids(config: Config, ids: Sequence[int]) -> dict[int, Job]:
    """The jobs of ``ids`` that exist, by id (no attempt log, no dependencies)."""
    async with config.connection_async() as conn:
        rows = await _rows(conn, config, "dashboard_jobs_by_ids", {"ids": list(ids)})
    return {int(row["id"]): job_from_row(row) for row in rows}


async def definition_failed(config: Config, definition: str) -> int | None:
    """How many jobs of ``definition`` failed; None when no such definition is stored."""
    async with config.connection_async() as conn:
        rows = await _rows(conn, config, "dashboard_definition_failed", {"definition": definition})
    return int(rows[0]["failed"]) if rows else None


# -- activity: throughput, failures and queue wait over time ---------------------------

#: The time ranges of the charts page (hours), each drawn as CHART_BUCKETS buckets.
CHART_RANGES_H = (1, 6, 24)
CHART_BUCKETS = 60
#: Most definitions drawn as charts of their own (the busiest); the API lists all.
CHART_DEFINITIONS_MAX = 12
_OUTCOMES = ("succeeded", "failed", "cancelled")


async def activity(config: Config, hours: int) -> dict[str, Any]:
    """Throughput and failures per definition, and queue wait, over the last ``hours``.

    Buckets are ``hours * 60`` seconds wide, aligned on multiples of that since
    the epoch, on the database clock; the last one is the current (partial) one.
    """
    bucket_s = hours * 3600 // CHART_BUCKETS
    async with config.connection_async() as conn:
        now_rows = await _rows(conn, config, "clock_now", {})
        now: dt.datetime = now_rows[0]["clock_timestamp"]
        elapsed_s = int((now - EPOCH).total_seconds())
        since = EPOCH + dt.timedelta(
            seconds=elapsed_s - elapsed_s % bucket_s - (CHART_BUCKETS - 1) * bucket_s
        )
        window = {"since": since, "bucket_s": bucket_s}
        throughput_rows = await _rows(conn, config, "dashboard_definition_throughput", window)
        wait_rows = await _rows(conn, config, "dashboard_queue_wait", window)
        due_rows = await _rows(conn, config, "dashboard_due_waiting", {})

    def index(bucket: Any) -> int:
        # A job finalized after `now` was read (the clock moved on) joins the last bucket.
        return min(max(int(bucket), 0), CHART_BUCKETS - 1)

    per_definition: dict[str, dict[str, list[int]]] = {}
    for row in throughput_rows:
        series = per_definition.setdefault(
            row["definition"], {name: [0] * CHART_BUCKETS for name in _OUTCOMES}
        )
        for name in _OUTCOMES:
            series[name][index(row["bucket"])] += int(row[name])
    definitions: list[dict[str, Any]] = [
        {
            "definition": name,
            **series,
            "totals": {outcome: sum(series[outcome]) for outcome in _OUTCOMES},
        }
        for name, series in per_definition.items()
    ]
    definitions.sort(key=lambda d: (-sum(d["totals"].values()), d["definition"]))

    wait_buckets: list[dict[str, Any]] = [
        {
            "start": since + dt.timedelta(seconds=n * bucket_s),
            "started": 0,
            "p50_ms": None,
            "p95_ms": None,
            "max_ms": None,
        }
        for n in range(CHART_BUCKETS)
    ]
    waits: dict[str, dict[str, Any]] = {}
    for row in wait_rows:
        numbers = {
            "started": int(row["started"]),
            "p50_ms": int(row["p50_ms"]),
            "p95_ms": int(row["p95_ms"]),
            "max_ms": int(row["max_ms"]),
        }
        if row["definition"] is None:
            bucket = wait_buckets[index(row["bucket"])]
            if bucket["started"]:  # two rows folded into the last bucket: keep the larger
                numbers = {k: max(v, bucket[k]) for k, v in numbers.items()}
            bucket.update(numbers)
        else:
            waits[row["definition"]] = numbers
    due = {row["definition"]: (int(row["due"]), int(row["oldest_ms"])) for row in due_rows}
    empty = {"started": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    by_definition = [
        {
            "definition": name,
            **waits.get(name, empty),
            "due": due.get(name, (0, None))[0],
            "oldest_due_ms": due.get(name, (0, None))[1],
        }
        for name in sorted(waits.keys() | due.keys())
    ]
    return {
        "now": now,
        "hours": hours,
        "bucket_seconds": bucket_s,
        "since": since,
        "definitions": definitions,
        "wait": {"buckets": wait_buckets, "by_definition": by_definition},
    }
