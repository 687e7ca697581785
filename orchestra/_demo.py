"""``orchestra demo``: jobs flowing through a real PostgreSQL, with live progress.

It migrates a schema of its own, defines a few jobs (a typed one, one that
fails twice and is retried, a dependency chain, an async one, a delayed one, a
high-priority one, a cron job firing every second, a rate-limited one), runs a
worker and an orchestrator in this process and shows what happens.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import shlex
import threading
import time
from typing import Any

import attrs
import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestra import _db, events
from orchestra._backoff import Backoff
from orchestra._config import Config
from orchestra._database import DSN_ENV
from orchestra._definition import JobContext, JobDefinition
from orchestra._embedded import HOME_ENV
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
        raise ConnectionError("upstream timed out")
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


#: Failed attempts shown while the demo runs (it makes two; all stay visible).
SHOWN_FAILURES = 10
#: Other lines of the live log shown, the latest ones.
SHOWN_LATEST = 6


def run(*, dsn: str | None, schema: str, timeout_s: float, dsn_from_argv: bool = False) -> int:
    """Run the demo; return the exit code.

    ``dsn_from_argv``: the DSN was given with --dsn (not through ORCHESTRA_DSN),
    so the commands printed at the end repeat it (unless it holds a password).
    """
    config = Config(dsn, schema=schema)
    shown_dsn = config.redacted_dsn  # starts the embedded server first, if it is the one
    console.print("[bold]orchestra demo[/]")
    # The DSN on a line of its own: an embedded server's is long (a socket path).
    console.print(f"  database  {escape(shown_dsn)}", soft_wrap=True)
    console.print(f"  schema    [cyan]{schema}[/] (dropped and created again)")
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
    failures: list[str] = []
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
                failures.append(
                    f"[yellow]{event.definition}#{event.job_id}[/] attempt {event.attempt}: "
                    f"{escape(event.error)} ({retry})"
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
    flaky_id = defs["flaky"].defer({}).id
    first = defs["fetch"].defer({})
    second = defs["transform"].defer({}, depends_on=[first])
    defs["publish"].defer({}, depends_on=[second])
    defs["report"].defer({}, delay_ms=1_500)
    defs["urgent"].defer({})
    defs["notify"].defer_many([{} for _ in range(8)])
    total = 214  # and at least 3 cron ticks

    def render() -> Group:
        table = Table(title=f"{time.monotonic() - started:4.1f} s", show_edge=False)
        table.add_column("event")
        table.add_column("count", justify="right")
        with lock:
            for name, count in sorted(counts.items()):
                table.add_row(name, str(count))
            # Failed attempts apart from the rest: the successes that follow
            # them must not push them out of sight.
            lines = [Text.from_markup("[bold]failed attempts[/] (retried with backoff)")]
            lines += [Text.from_markup(f"  {line}") for line in failures[:SHOWN_FAILURES]]
            if not failures:
                lines.append(Text("  none yet"))
            lines.append(Text.from_markup("[bold]latest[/]"))
            lines += [Text.from_markup(f"  {line}") for line in log[-SHOWN_LATEST:]]
        return Group(table, *lines)

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
    console.print()
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
    # soft_wrap: in a pipe or a log, a line stays one line.
    if gap and gap[0] is not None:
        console.print(
            f"rate limit: 8 [cyan]notify[/] jobs started >= "
            f"{gap[0].total_seconds() * 1000:.0f} ms apart (release_interval_ms=250)",
            soft_wrap=True,
        )
    if tick_counts:
        console.print(
            f"cron: {tick_counts[0]} [cyan]tick[/] jobs for {tick_counts[1]} distinct ticks "
            "(one per second)",
            soft_wrap=True,
        )
    console.print(
        "dependencies: fetch -> transform -> publish ran in that order (see the table)",
        soft_wrap=True,
    )
    elapsed = time.monotonic() - started
    if ok:
        console.print(
            f"[bold green]{worker.stats.succeeded} jobs succeeded in {elapsed:.1f} s[/] "
            f"({worker.stats.failed} failed attempts retried)."
        )
    else:
        console.print(
            f"[bold red]only {worker.stats.succeeded} of {total} jobs succeeded "
            f"within {timeout_s} s[/]"
        )
    _print_next_steps(config, flaky_id, dsn_given=dsn if dsn_from_argv else None)
    config.close()
    return 0 if ok else 1


def _print_next_steps(config: Config, flaky_id: int, *, dsn_given: str | None) -> None:
    """The commands that show what the demo did, with the DSN and schema it used."""
    where = ["--schema", config.schema]
    note = ""
    if dsn_given is not None:
        if _db.redact_dsn(dsn_given) == dsn_given:
            where = ["--dsn", dsn_given, *where]
        else:
            note = (
                f"with {DSN_ENV} set to the DSN given to the demo (its password is not "
                "printed here)"
            )
    elif os.environ.get(DSN_ENV, "").strip():
        note = f"with {DSN_ENV} set as for the demo"
    elif os.environ.get(HOME_ENV, "").strip():  # the embedded server of that directory
        note = f"with {HOME_ENV} set as for the demo"
    console.print(
        f"Schema {config.schema!r} is left for you to look at"
        + (f", {escape(note)}:" if note else ":"),
        soft_wrap=True,
    )
    for command in (
        ["orchestra", "jobs", "list", *where],
        ["orchestra", "jobs", "show", str(flaky_id), *where],
        ["orchestra", "dashboard", *where],
    ):
        console.print("  " + escape(shlex.join(command)), soft_wrap=True)
