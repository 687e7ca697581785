"""The ``orchestra`` command.

Exit codes: 0 success, 1 runtime error (database down, schema not ready, a
crash), 2 usage error (bad option, --app that does not import). Errors are one
readable line, never a traceback, and never show a password.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg
from rich.console import Console
from rich.markup import escape

from orchestra import __version__, _db
from orchestra._config import DEFAULT_SCHEMA, DSN_ENV, Config
from orchestra.errors import AppImportError, ConfigurationError, OrchestraError
from orchestra.handlers import JsonFormatter, LoggingHandler

# soft_wrap: an error stays one line even when stderr is a pipe, not a terminal.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

DSN_HELP = (
    f"PostgreSQL connection string. Default: ${DSN_ENV}, else the embedded PostgreSQL. "
    "Prefer the environment variable or ~/.pgpass for passwords: argv is visible to other users."
)


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {escape(_db.redact(message))}")
    sys.exit(code)


def handle_errors(function: F) -> F:
    """Turn orchestra and database errors into one line and an exit code."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AppImportError as exc:
            _fail(str(exc), 2)
        except ConfigurationError as exc:
            _fail(str(exc), 2)
        except OrchestraError as exc:
            _fail(str(exc), 1)
        except psycopg.Error as exc:
            _fail(f"database error: {str(exc).strip()}", 1)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        return None

    return wrapper  # type: ignore[return-value]


def _warn_password_on_argv(dsn: str | None, source: str) -> None:
    if dsn and source == "argv" and _db.redact_dsn(dsn) != dsn:
        err_console.print(
            "[yellow]warning:[/] the --dsn on the command line contains a password, which other "
            f"users can read from the process list; use ${DSN_ENV} or ~/.pgpass instead"
        )


def _dsn_option(function: F) -> F:
    return click.option("--dsn", envvar=DSN_ENV, default=None, metavar="DSN", help=DSN_HELP)(
        function
    )


def _schema_option(function: F) -> F:
    return click.option(
        "--schema",
        default=DEFAULT_SCHEMA,
        show_default=True,
        metavar="NAME",
        help="PostgreSQL schema holding the queue (lower-case letters, digits, _).",
    )(function)


def _dsn_source(ctx: click.Context) -> str:
    source = ctx.get_parameter_source("dsn")
    return "argv" if source is click.core.ParameterSource.COMMANDLINE else "env"


def configure_logging(log_format: str, level: str) -> None:
    """Log to stderr as text (for people) or JSON lines (for collectors)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # psycopg's pool is chatty about reconnections that orchestra already reports.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))


def load_app(reference: str) -> Config:
    """Import ``pkg.module:attribute`` and return the Config it names (or builds)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise AppImportError(f"--app {reference!r}: expected the form pkg.module:config")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppImportError(f"--app {reference!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        value = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise AppImportError(
            f"--app {reference!r}: {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not isinstance(value, Config) and callable(value):
        try:
            value = value()
        except Exception as exc:
            raise AppImportError(
                f"--app {reference!r}: calling {attribute!r} to build the Config failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(value, Config):
        raise AppImportError(
            f"--app {reference!r}: expected an orchestra Config (or a function returning one), "
            f"got {type(value).__name__}"
        )
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="orchestra")
def main() -> None:
    """orchestra: a PostgreSQL-backed job queue and scheduling orchestrator.

    Workers claim and run jobs; orchestrators schedule and keep the queue
    healthy. Both share one PostgreSQL schema.
    """


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
    default=1,
    show_default=True,
    help="Most jobs running at once.",
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
    help="Orchestrator: how often old finalized jobs and stale definitions are swept.",
)
@click.option(
    "--archive",
    is_flag=True,
    help="Orchestrator: move swept jobs to the job_archive table instead of deleting them.",
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
@handle_errors
def daemon(
    role: str,
    app_ref: str,
    channel: str,
    concurrency: int,
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
    log_format: str,
    log_level: str,
) -> None:
    """Run a daemon until SIGTERM or SIGINT (graceful; a second signal stops at once).

    The DSN and schema are those of the Config named by --app. --role all runs
    a worker and an orchestrator in one process (development, demos).
    """
    import asyncio  # noqa: PLC0415 (keeps `orchestra --help` fast)

    from orchestra._daemon import Daemon, run_together  # noqa: PLC0415
    from orchestra._orchestrator import Orchestrator  # noqa: PLC0415
    from orchestra._worker import Worker  # noqa: PLC0415

    configure_logging(log_format, log_level)
    config = load_app(app_ref)
    daemons: list[Daemon] = []
    if role in ("worker", "all"):
        daemons.append(
            Worker(
                config,
                channel=channel,
                concurrency=concurrency,
                name=name,
                event_handler=LoggingHandler(),
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
                event_handler=LoggingHandler(),
                leader_lease_ms=leader_lease_ms,
                repeat_interval_ms=repeat_interval_ms,
                rescue_interval_ms=rescue_interval_ms,
                finalize_interval_ms=finalize_interval_ms,
                clean_interval_ms=clean_interval_ms,
                archive=archive,
            )
        )
    asyncio.run(run_together(daemons))
    _exit_despite_stuck_threads()


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


if __name__ == "__main__":
    main()
