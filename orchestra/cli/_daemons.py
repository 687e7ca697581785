"""`orchestra migrate`, `orchestra daemon` and `orchestra demo`."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from orchestra import __version__, _db, _migrate, events
from orchestra._config import Config
from orchestra.cli._app import (
    _dsn_option,
    _dsn_source,
    _warn_password_on_argv,
    check_text_options,
    configure_logging,
    err_console,
    handle_errors,
    main,
    queue_options,
    resolve_config,
)
from orchestra.errors import (
    ConfigurationError,
    OrchestraError,
)
from orchestra.handlers import LoggingHandler

if TYPE_CHECKING:
    from orchestra._daemon import Daemon


@main.command()
@queue_options()
@click.pass_context
@handle_errors
def migrate(ctx: click.Context, app_ref: str | None, dsn: str | None, schema: str | None) -> None:
    """Create or upgrade the queue schema (idempotent, safe to run concurrently)."""
    with resolve_config(ctx, app_ref, dsn, schema) as config:
        applied = config.prepare_schema()
        where = f"schema {config.schema!r} at {config.redacted_dsn}"
    if applied:
        err_console.print(f"applied {', '.join(applied)} to {where}")
    else:
        err_console.print(f"{where} is up to date")


@main.command()
@click.option(
    "--role",
    type=click.Choice(["worker", "orchestrator", "all"]),
    required=True,
    help="Which daemon to run. worker: claim and run jobs of its channels. orchestrator: "
    "schedule repeat/cron jobs, rescue, time out, sweep (run one or more; they elect a "
    "leader). all: both in one process.",
)
@queue_options(app_required=True)
@click.option(
    "--channel",
    "channels",
    multiple=True,
    metavar="NAME",
    help="Channel to serve; repeat it to serve several (channels of equal priority take "
    "turns).  [default: _default]",
)
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
    help="Poll only, no LISTEN/NOTIFY. Behind a transaction pooler, set "
    "$ORCHESTRA_TRANSACTION_POOLING=1 and, to keep LISTEN, $ORCHESTRA_LISTEN_DSN to a "
    "direct connection (or the Config's transaction_pooling and listen_dsn) instead.",
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
@click.option(
    "--queue-metrics",
    is_flag=True,
    help="With --metrics-port: also export the queue's gauges (jobs per status, oldest due "
    "job, live daemons, vacuum), read from the database when scraped (at most every 5 s). "
    "For deployments without an orchestrator; aggregate them with max, not sum.",
)
@click.pass_context
@handle_errors
def daemon(
    ctx: click.Context,
    role: str,
    app_ref: str,
    dsn: str | None,
    schema: str | None,
    channels: tuple[str, ...],
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
    queue_metrics: bool,
) -> None:
    """Run a daemon until SIGTERM or SIGINT (graceful; a second signal stops at once).

    It runs the definitions that the Config named by --app registers, on that
    Config's DSN and schema: --dsn and --schema (or their variables) must agree
    with it (they are exported before the app is imported, so a Config built
    from the environment follows them). --role all runs a worker and an
    orchestrator in one process (development, demos). Once started it logs one
    line saying what it serves.
    """
    # Before the app is imported or anything logged: a bad name starts nothing.
    check_text_options(name=name)
    served = _check_channels(channels)
    import asyncio  # noqa: PLC0415 (keeps `orchestra --help` fast)

    from orchestra._daemon import run_together  # noqa: PLC0415
    from orchestra._orchestrator import Orchestrator  # noqa: PLC0415
    from orchestra._worker import Worker  # noqa: PLC0415
    from orchestra.events import EventHandler  # noqa: PLC0415

    if queue_metrics and metrics_port is None:
        raise click.UsageError("--queue-metrics needs --metrics-port")
    configure_logging(log_format, log_level)
    config = resolve_config(ctx, app_ref, dsn, schema, runs_definitions=True)
    event_handlers: list[EventHandler] = [LoggingHandler()]
    if metrics_port is not None:
        event_handlers.append(_serve_metrics(metrics_port, config if queue_metrics else None))
    # Checked here, before any daemon starts: a schema that is not ready is one
    # error line, not the stop of every daemon of the process and then the error.
    with config.connect() as conn:
        _migrate.check(conn, config.schema)
    daemons: list[Daemon] = []  # filled below, read by the start-up line once they run
    event_handlers.append(_StartupLine(daemons, config))
    if role in ("worker", "all"):
        daemons.append(
            Worker(
                config,
                channels=served,
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


def _check_channels(channels: tuple[str, ...]) -> tuple[str, ...]:
    """The --channel values (``_default`` without one), or one line naming the bad one."""
    from orchestra._worker._options import DEFAULT_CHANNEL, check_channels  # noqa: PLC0415

    try:
        return check_channels(None, list(channels) or [DEFAULT_CHANNEL])
    except ConfigurationError as exc:
        raise ConfigurationError("--channel", exc.problem) from None


#: Names listed in the start-up line before "and N more".
BANNER_NAMES = 8


class _StartupLine:
    """Logs one line saying what the process serves, once every daemon of it has started."""

    def __init__(self, daemons: Sequence[Daemon], config: Config) -> None:
        self._daemons = daemons
        self._config = config
        self._started: set[int] = set()

    def __call__(self, event: events.Event) -> None:
        if not isinstance(event, events.DaemonStarted):
            return
        self._started.add(event.daemon_id)
        if len(self._started) == len(self._daemons):
            logging.getLogger("orchestra").info("%s", startup_line(self._daemons, self._config))


def startup_line(daemons: Sequence[Daemon], config: Config) -> str:
    """What the daemons of this process serve: role, channels, concurrency, definitions, queue."""
    from orchestra._worker import Worker  # noqa: PLC0415

    workers = [d for d in daemons if isinstance(d, Worker)]
    roles = " and ".join(d.role for d in daemons)
    parts = [f"orchestra {__version__} {roles} {daemons[0].name!r}"]
    names = sorted(config.definitions)
    if workers:
        worker = workers[0]
        how = f"in {worker.processes} child process(es)" if worker.processes else "in threads"
        served = ", ".join(repr(channel) for channel in worker.channels)
        plural = "s" if len(worker.channels) > 1 else ""
        parts.append(
            f"serving channel{plural} {served} with concurrency {worker.concurrency} {how}"
        )
        parts.append(_wakeups(worker.listen_notify, config))
        carried = [n for n in names if config.definitions[n].channel in worker.channels]
        others = len(names) - len(carried)
        definitions = _listed(carried) or f"no definition of channel{plural} {served}"
        if others:
            definitions += f" ({others} more of other channels, not run by this worker)"
    else:
        definitions = _listed(names) or "no definitions"
    if len(workers) < len(daemons):
        parts.append("orchestrating every channel")
    pooling = " (transaction pooling)" if config.transaction_pooling else ""
    return (
        f"{', '.join(parts)}; carries {definitions}; "
        f"schema {config.schema!r} at {config.redacted_dsn}{pooling}"
    )


def _wakeups(listen_notify: bool, config: Config) -> str:
    """How the worker learns of new jobs: LISTEN (and where), or polling only (and why)."""
    if not listen_notify:
        return "polling only (--no-listen)"
    listen_dsn = config.listen_dsn
    if listen_dsn is None:
        return "polling only (transaction pooling without a listen DSN)"
    if listen_dsn == config.dsn:
        return "woken by LISTEN"
    return f"woken by LISTEN at {_db.redact_dsn(listen_dsn)}"


def _listed(names: Sequence[str]) -> str:
    """``3 definition(s): a, b, c``, the list cut after BANNER_NAMES names."""
    if not names:
        return ""
    shown = ", ".join(names[:BANNER_NAMES])
    if len(names) > BANNER_NAMES:
        shown += f" and {len(names) - BANNER_NAMES} more"
    return f"{len(names)} definition(s): {shown}"


def _serve_metrics(port: int, queue: Config | None = None) -> Callable[[Any], None]:
    """Serve ``/metrics`` on ``port`` (--metrics-port); return the handler that feeds it.

    ``queue``: read the queue's gauges from its database when scraped (--queue-metrics).
    """
    try:
        from orchestra.metrics import PrometheusHandler, serve_metrics  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigurationError("--metrics-port", str(exc)) from None
    handler = PrometheusHandler(queue=queue)
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
    """Run a short demonstration against a real PostgreSQL (embedded if no DSN).

    It works in a schema of its own (--schema, never $ORCHESTRA_SCHEMA: the
    demo drops it first) and ends with the commands that show what it did.
    """
    from orchestra import _demo  # noqa: PLC0415

    source = _dsn_source(ctx)
    _warn_password_on_argv(dsn, source)
    sys.exit(_demo.run(dsn=dsn, schema=schema, timeout_s=seconds, dsn_from_argv=source == "argv"))
