"""`orchestra migrate`, `orchestra daemon` and `orchestra demo`."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from orchestra._config import Config
from orchestra.cli._app import (
    _dsn_option,
    _dsn_source,
    _schema_option,
    _warn_password_on_argv,
    check_text_options,
    configure_logging,
    err_console,
    handle_errors,
    load_app,
    main,
)
from orchestra.errors import (
    ConfigurationError,
    OrchestraError,
)
from orchestra.handlers import LoggingHandler


@main.command()
@_dsn_option
@_schema_option
@click.pass_context
@handle_errors
def migrate(ctx: click.Context, dsn: str | None, schema: str) -> None:
    """Create or upgrade the queue schema (idempotent, safe to run concurrently)."""
    _warn_password_on_argv(dsn, _dsn_source(ctx))
    with Config(dsn, schema=schema) as config:
        applied = config.prepare_schema()
        where = f"schema {schema!r} at {config.redacted_dsn}"
    if applied:
        err_console.print(f"applied {', '.join(applied)} to {where}")
    else:
        err_console.print(f"{where} is up to date")


@main.command()
@click.option(
    "--role",
    type=click.Choice(["worker", "orchestrator", "all"]),
    required=True,
    help="Which daemon to run. worker: claim and run jobs of one channel. orchestrator: "
    "schedule repeat/cron jobs, rescue, time out, sweep (run one or more; they elect a "
    "leader). all: both in one process.",
)
@click.option(
    "--app",
    "app_ref",
    required=True,
    metavar="MODULE:CONFIG",
    help="Where your Config lives, e.g. myapp.jobs:config. Importing the module must "
    "register your JobDefinitions. A function returning a Config also works.",
)
@click.option("--channel", default="_default", show_default=True, help="Channel to serve.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Most jobs running at once.  [default: 1, or --processes]",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=None,
    help="Run job functions in this many child processes (CPU-bound work) instead of threads.",
)
@click.option(
    "--name",
    default="anon",
    show_default=True,
    help="Daemon name in events, logs and the worker table.",
)
@click.option(
    "--process-interval-ms",
    type=click.IntRange(10),
    default=1000,
    show_default=True,
    help="Polling interval when idle; NOTIFY usually wakes the worker sooner.",
)
@click.option(
    "--shutdown-grace-ms",
    type=click.IntRange(0),
    default=30_000,
    show_default=True,
    help="On SIGTERM/SIGINT, how long running jobs may take to finish; the rest are "
    "recorded as interrupted and retried.",
)
@click.option(
    "--no-listen",
    is_flag=True,
    help="Poll only, no LISTEN/NOTIFY (for PgBouncer in transaction pooling mode).",
)
@click.option(
    "--leader-lease-ms",
    type=click.IntRange(200),
    default=15_000,
    show_default=True,
    help="Orchestrator: the leader lease; a dead leader is replaced after about this long.",
)
@click.option(
    "--repeat-interval-ms",
    type=click.IntRange(10),
    default=30_000,
    show_default=True,
    help="Orchestrator: longest sleep of the repeat/cron scheduler (it wakes for the next tick).",
)
@click.option(
    "--rescue-interval-ms",
    type=click.IntRange(10),
    default=5_000,
    show_default=True,
    help="Orchestrator: how often jobs of dead workers and expired leases are taken back.",
)
@click.option(
    "--finalize-interval-ms",
    type=click.IntRange(10),
    default=5_000,
    show_default=True,
    help="Orchestrator: how often timeouts and failed dependencies are finalized.",
)
@click.option(
    "--clean-interval-ms",
    type=click.IntRange(10),
    default=300_000,
    show_default=True,
    help="Orchestrator: how often the history's retention is applied and stale "
    "definitions are swept.",
)
@click.option(
    "--archive",
    is_flag=True,
    help="Orchestrator: keep finished jobs in job_history for --archive-retention-ms "
    "(default: for ever) instead of the finalized-job threshold (12 h).",
)
@click.option(
    "--archive-retention-ms",
    type=click.IntRange(0),
    default=None,
    metavar="MS",
    help="Orchestrator, with --archive: how long finished jobs are kept in job_history "
    "(default: for ever).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines for people (text) or collectors (json).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe level logged.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65_535),
    default=None,
    metavar="PORT",
    help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (extra: metrics).",
)
@handle_errors
def daemon(
    role: str,
    app_ref: str,
    channel: str,
    concurrency: int | None,
    processes: int | None,
    name: str,
    process_interval_ms: int,
    shutdown_grace_ms: int,
    no_listen: bool,
    leader_lease_ms: int,
    repeat_interval_ms: int,
    rescue_interval_ms: int,
    finalize_interval_ms: int,
    clean_interval_ms: int,
    archive: bool,
    archive_retention_ms: int | None,
    log_format: str,
    log_level: str,
    metrics_port: int | None,
) -> None:
    """Run a daemon until SIGTERM or SIGINT (graceful; a second signal stops at once).

    The DSN and schema are those of the Config named by --app. --role all runs
    a worker and an orchestrator in one process (development, demos).
    """
    # Before the app is imported or anything logged: a bad name starts nothing.
    check_text_options(name=name, channel=channel)
    import asyncio  # noqa: PLC0415 (keeps `orchestra --help` fast)

    from orchestra._daemon import Daemon, run_together  # noqa: PLC0415
    from orchestra._orchestrator import Orchestrator  # noqa: PLC0415
    from orchestra._worker import Worker  # noqa: PLC0415
    from orchestra.events import EventHandler  # noqa: PLC0415

    configure_logging(log_format, log_level)
    config = load_app(app_ref)
    event_handlers: list[EventHandler] = [LoggingHandler()]
    if metrics_port is not None:
        event_handlers.append(_serve_metrics(metrics_port))
    daemons: list[Daemon] = []
    if role in ("worker", "all"):
        daemons.append(
            Worker(
                config,
                channel=channel,
                concurrency=concurrency,
                processes=processes,
                name=name,
                event_handler=event_handlers,
                process_interval_ms=process_interval_ms,
                shutdown_grace_ms=shutdown_grace_ms,
                listen_notify=not no_listen,
            )
        )
    if role in ("orchestrator", "all"):
        daemons.append(
            Orchestrator(
                config,
                name=name,
                event_handler=event_handlers,
                leader_lease_ms=leader_lease_ms,
                repeat_interval_ms=repeat_interval_ms,
                rescue_interval_ms=rescue_interval_ms,
                finalize_interval_ms=finalize_interval_ms,
                clean_interval_ms=clean_interval_ms,
                archive=archive,
                archive_retention_ms=archive_retention_ms,
            )
        )
    asyncio.run(run_together(daemons))
    _exit_despite_stuck_threads()


def _serve_metrics(port: int) -> Callable[[Any], None]:
    """Serve ``/metrics`` on ``port`` (--metrics-port); return the handler that feeds it."""
    try:
        from orchestra.metrics import PrometheusHandler, serve_metrics  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigurationError("--metrics-port", str(exc)) from None
    handler = PrometheusHandler()
    try:
        serve_metrics(port)
    except OSError as exc:
        raise OrchestraError(
            f"--metrics-port {port}: cannot serve metrics: {exc.strerror or exc}"
        ) from None
    logging.getLogger("orchestra").info("serving Prometheus metrics at :%d/metrics", port)
    return handler


def _exit_despite_stuck_threads() -> None:
    """Exit now even if a sync job ignored the grace period and still runs in a thread.

    Its job was already recorded as interrupted (and will be retried); waiting
    for the thread would turn a graceful stop into a hang.
    """
    stuck = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if not stuck:
        return
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.command()
@_dsn_option
@click.option(
    "--schema",
    default="orchestra_demo",
    show_default=True,
    metavar="NAME",
    help="Schema for the demo; it is dropped and created again.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(1, 600),
    default=20.0,
    show_default=True,
    help="Give up waiting for the demo jobs after this long.",
)
@click.pass_context
@handle_errors
def demo(ctx: click.Context, dsn: str | None, schema: str, seconds: float) -> None:
    """Run a short demonstration against a real PostgreSQL (embedded if no DSN)."""
    from orchestra import _demo  # noqa: PLC0415

    _warn_password_on_argv(dsn, _dsn_source(ctx))
    sys.exit(_demo.run(dsn=dsn, schema=schema, timeout_s=seconds))
