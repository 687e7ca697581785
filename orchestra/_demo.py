"""``orchestra demo``: jobs flowing through a real PostgreSQL, with live progress.

It migrates a schema of its own, defines a few jobs (a typed one, one that
fails twice and is retried, a dependency chain, an async one, a delayed one, a
high-priority one, a cron job firing every second, a rate-limited one), runs a
worker and an orchestrator in this process and shows what happens.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from typing import Any

import attrs
import psycopg
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestra import events
from orchestra._backoff import Backoff
from orchestra._config import Config
from orchestra._definition import JobContext, JobDefinition
from orchestra._orchestrator import Orchestrator
from orchestra._worker import Worker

console = Console(highlight=False)


@attrs.frozen
class Order:
    """The payload of the typed job."""

    order_id: int
    customer: str
    amount_cents: int


def charge(order: Order, ctx: JobContext) -> dict[str, Any]:
    """A sync job: pretends to charge a card."""
    time.sleep(random.uniform(0.01, 0.05))
    return {"order_id": order.order_id, "charged": order.amount_cents}


def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
    """Fails on its first two attempts, then succeeds."""
    if ctx.attempt < 3:
        raise ConnectionError(f"upstream timed out (attempt {ctx.attempt})")
    return "third time lucky"


async def fetch(payload: dict[str, Any]) -> str:
    """An async job: step one of a chain."""
    await asyncio.sleep(0.2)
    return "fetched"


async def transform(payload: dict[str, Any]) -> str:
    """Step two: runs only after fetch succeeded."""
    await asyncio.sleep(0.1)
    return "transformed"


def publish(payload: dict[str, Any]) -> str:
    """Step three: runs only after transform succeeded."""
    return "published"


def report(payload: dict[str, Any]) -> str:
    """Deferred with a delay; runs 1.5 s later."""
    return "report ready"


def urgent(payload: dict[str, Any]) -> str:
    """Deferred last with a high priority: it jumps the queue."""
    return "handled first"


def heartbeat_tick() -> None:
    """A cron job: runs on every whole second."""


def notify_partner(payload: dict[str, Any]) -> None:
    """Rate-limited: at most one start every 250 ms, fleet-wide."""


def run(*, dsn: str | None, schema: str, timeout_s: float) -> int:
    """Run the demo; return the exit code."""
    config = Config(dsn, schema=schema)
    console.print(f"[bold]orchestra demo[/] on {config.redacted_dsn}, schema [cyan]{schema}[/]")
    with config.connection() as conn:
        conn.execute(
            psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                psycopg.sql.Identifier(schema)
            )
        )
    config.prepare_schema()

    charge_def: JobDefinition[Order] = JobDefinition(
        config, name="charge", job_function=charge, payload_type=Order, channel="demo"
    )
    defs: dict[str, JobDefinition[Any]] = {
        "flaky": JobDefinition(
            config,
            name="flaky",
            job_function=flaky,
            channel="demo",
            num_attempts=3,
            backoff=Backoff.fixed(300, jitter=0),
        ),
        "fetch": JobDefinition(config, name="fetch", job_function=fetch, channel="demo"),
        "transform": JobDefinition(
            config, name="transform", job_function=transform, channel="demo"
        ),
        "publish": JobDefinition(config, name="publish", job_function=publish, channel="demo"),
        "report": JobDefinition(config, name="report", job_function=report, channel="demo"),
        "tick": JobDefinition(
            config, name="tick", job_function=heartbeat_tick, channel="demo", cron="* * * * * *"
        ),
        "notify": JobDefinition(
            config,
            name="notify",
            job_function=notify_partner,
            channel="demo",
            release_interval_ms=250,
        ),
        "urgent": JobDefinition(
            config, name="urgent", job_function=urgent, channel="demo", priority=50
        ),
    }

    counts: collections.Counter[str] = collections.Counter()
    log: list[str] = []
    lock = threading.Lock()

    def on_event(event: events.Event) -> None:
        with lock:
            counts[type(event).__name__] += 1
            if isinstance(event, events.WorkerJobFailed):
                retry = (
                    f"retry in {(event.retry_at - event.timestamp).total_seconds():.1f} s"
                    if event.retry_at
                    else "no retry"
                )
                log.append(
                    f"[yellow]{event.definition}#{event.job_id}[/] attempt {event.attempt} "
                    f"failed: {event.error} ({retry})"
                )
            elif isinstance(event, events.WorkerJobSucceeded) and event.definition != "charge":
                log.append(
                    f"[green]{event.definition}#{event.job_id}[/] "
                    f"succeeded on attempt {event.attempt}"
                )

    worker = Worker(
        config,
        channel="demo",
        concurrency=8,
        name="demo",
        event_handler=on_event,
        process_interval_ms=100,
    )
    orchestrator = Orchestrator(
        config, name="demo", event_handler=on_event, repeat_interval_ms=200, leader_lease_ms=2_000
    )
    worker.start()
    orchestrator.start()
    started = time.monotonic()
    orders = [
        Order(i, random.choice(["ada", "grace", "linus"]), random.randint(100, 9_999))
        for i in range(200)
    ]
    charge_def.defer_many(orders)
    defs["flaky"].defer({})
    first = defs["fetch"].defer({})
    second = defs["transform"].defer({}, depends_on=[first])
    defs["publish"].defer({}, depends_on=[second])
    defs["report"].defer({}, delay_ms=1_500)
    defs["urgent"].defer({})
    defs["notify"].defer_many([{} for _ in range(8)])
    total = 214  # and at least 3 cron ticks

    def render() -> Table:
        table = Table(title=f"{time.monotonic() - started:4.1f} s", show_edge=False)
        table.add_column("event")
        table.add_column("count", justify="right")
        with lock:
            for name, count in sorted(counts.items()):
                table.add_row(name, str(count))
            for line in log[-8:]:
                table.add_row(line, "")
        return table

    ok = False
    with Live(render(), console=console, refresh_per_second=8, transient=False) as live:
        while time.monotonic() - started < timeout_s:
            live.update(render())
            ticks = counts["OrchestratorJobScheduled"]
            if worker.stats.succeeded >= total + 3 and ticks >= 3:
                ok = True
                break
            time.sleep(0.1)
        live.update(render())
    worker.stop()
    orchestrator.stop()
    worker.join()
    orchestrator.join()

    with config.connection() as conn:
        rows = conn.execute(
            psycopg.sql.SQL(
                "SELECT definition, count(*), count(*) FILTER (WHERE status = 'succeeded'), "
                "max(attempt), "
                "min(started_at) FROM {}.all_jobs GROUP BY definition ORDER BY min(started_at)"
            ).format(psycopg.sql.Identifier(schema))
        ).fetchall()
    summary = Table(title="jobs by definition (in order of first start)")
    for column in ("definition", "jobs", "succeeded", "most attempts"):
        summary.add_column(column)
    for definition, jobs, succeeded, attempts, _ in rows:
        summary.add_row(definition, str(jobs), str(succeeded), str(attempts))
    console.print(summary)
    with config.connection() as conn:
        gap = conn.execute(
            psycopg.sql.SQL(
                "SELECT min(gap) FROM (SELECT a.started_at - "
                "lag(a.started_at) OVER (ORDER BY a.started_at) AS gap "
                "FROM {s}.all_job_attempts a JOIN {s}.all_jobs j ON j.id = a.job_id "
                "WHERE j.definition = 'notify') g"
            ).format(s=psycopg.sql.Identifier(schema))
        ).fetchone()
        tick_counts = conn.execute(
            psycopg.sql.SQL(
                "SELECT count(*), count(DISTINCT tick_at) FROM {s}.all_jobs "
                "WHERE definition = 'tick'"
            ).format(s=psycopg.sql.Identifier(schema))
        ).fetchone()
    if gap and gap[0] is not None:
        console.print(
            f"rate limit: 8 [cyan]notify[/] jobs started at least "
            f"{gap[0].total_seconds() * 1000:.0f} ms apart (release_interval_ms=250)"
        )
    if tick_counts:
        console.print(
            f"cron: {tick_counts[0]} [cyan]tick[/] jobs for {tick_counts[1]} distinct ticks "
            "(one per second)"
        )
    console.print("dependencies: fetch -> transform -> publish ran in that order (see the table)")
    elapsed = time.monotonic() - started
    if ok:
        console.print(
            f"[bold green]{worker.stats.succeeded} jobs succeeded in {elapsed:.1f} s[/] "
            f"({worker.stats.failed} failed attempts retried). "
            f"Schema {schema!r} is left for you to inspect."
        )
        config.close()
        return 0
    console.print(
        f"[bold red]only {worker.stats.succeeded} of {total} jobs succeeded within {timeout_s} s[/]"
    )
    config.close()
    return 1
