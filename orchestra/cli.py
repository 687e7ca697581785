"""The ``orchestra`` command.

Exit codes: 0 success, 1 runtime error (database down, schema not ready, a
crash), 2 usage error (bad option, --app that does not import). Errors are one
readable line, never a traceback, and never show a password.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import click
import psycopg
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestra import __version__, _db
from orchestra._config import DEFAULT_SCHEMA, DSN_ENV, Config
from orchestra._jobs import STATUSES, DefinitionInfo, Job, Jobs
from orchestra.errors import (
    AppImportError,
    ConfigurationError,
    JobStateError,
    OrchestraError,
    UnknownJobError,
)
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
    log_format: str,
    log_level: str,
    metrics_port: int | None,
) -> None:
    """Run a daemon until SIGTERM or SIGINT (graceful; a second signal stops at once).

    The DSN and schema are those of the Config named by --app. --role all runs
    a worker and an orchestrator in one process (development, demos).
    """
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


# -- job management: `orchestra jobs ...` and `orchestra definitions ...` (I8, I9) ----------
#
# Thin wrappers over Config.jobs (orchestra/_jobs.py): every rule lives there.
# Tables for people on stdout, or one JSON document with --json for programs;
# errors on stderr, one line each. For several ids, each id is tried and
# reported on its own, and the exit code is 1 if any of them failed.

#: Tables go to stdout; highlight off so that ids and numbers are not restyled.
out_console = Console(highlight=False)
LIST_LIMIT_DEFAULT = 50
_STATUS_STYLES = {
    "waiting": "magenta",
    "available": "blue",
    "running": "cyan",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}


def _error(message: str) -> None:
    """Print one error line (as _fail does) without exiting."""
    err_console.print(f"[bold red]error:[/] {escape(_db.redact(message))}")


@contextlib.contextmanager
def _job_manager(ctx: click.Context, dsn: str | None, schema: str) -> Iterator[Jobs]:
    """Config.jobs for the command's --dsn and --schema, on a schema known to be migrated."""
    _warn_password_on_argv(dsn, _dsn_source(ctx))
    with Config(dsn, schema=schema) as config:
        config.check_schema()  # SchemaNotReadyError says to run `orchestra migrate`
        yield config.jobs


def _json_value(_instance: Any, _field: Any, value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _plain(value: Job | DefinitionInfo) -> dict[str, Any]:
    """A Job or DefinitionInfo as JSON-able data (datetimes in ISO 8601)."""
    return attrs.asdict(value, value_serializer=_json_value)


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _when(value: dt.datetime | None) -> str:
    """A timestamp for people, in UTC to the second (--json has the full precision)."""
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: dt.datetime, end: dt.datetime) -> str:
    seconds = max(0.0, (end - start).total_seconds())
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _table(**kwargs: Any) -> Table:
    """A table that stays readable at 80 columns (a pipe, a log): light borders only."""
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, **kwargs)


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLES.get(status, ""))


def _one_line(text: str | None, limit: int = 80) -> str:
    """The first line of ``text``, cut at ``limit`` characters (tables stay one row per item)."""
    if not text:
        return ""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _jobs_table(found: Sequence[Job], caption: str) -> Table:
    # Short columns never wrap; names fold; the error is cut to what is left of
    # the width (at least a few words), so that 80 columns (a pipe) stay legible.
    # A column that never wraps and holds long text would squeeze the others to
    # nothing (rich), so the error column wraps rather than clips.
    table = _table(caption=caption, caption_justify="left")
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("definition", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("run at (UTC)", no_wrap=True)
    table.add_column("last error", overflow="ellipsis")
    # Width left for the error: the console's minus the other columns' widest
    # cells (definitions counted up to 30, beyond that they fold) and the 3
    # characters of padding between columns.
    widths = [
        max(len("id"), *(len(str(job.id)) for job in found)),
        min(30, max(len("definition"), *(len(job.definition) for job in found))),
        len("available"),
        max(len("attempt"), *(len(f"{job.attempt}/{job.max_attempts}") for job in found)),
        len("2000-01-01 00:00:00"),
    ]
    error_chars = max(16, out_console.width - sum(widths) - 3 * len(widths) - 2)
    for job in found:
        table.add_row(
            str(job.id),
            Text(job.definition),
            _status(job.status),
            f"{job.attempt}/{job.max_attempts}",
            _when(job.run_at),
            Text(_one_line(job.last_error, error_chars)),
        )
    return table


@main.group("jobs")
def jobs_group() -> None:
    """List, show, retry, cancel and delete jobs (also failed ones in bulk)."""


@jobs_group.command("list")
@click.option(
    "--status",
    "statuses",
    type=click.Choice(STATUSES),
    multiple=True,
    help="Only jobs with this status; repeat for several. Default: every status.",
)
@click.option("--definition", metavar="NAME", help="Only jobs of this definition.")
@click.option("--channel", metavar="NAME", help="Only jobs of this channel.")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=LIST_LIMIT_DEFAULT,
    show_default=True,
    help="Most jobs shown.",
)
@click.option(
    "--offset", type=click.IntRange(0), default=0, show_default=True, help="Jobs skipped first."
)
@click.option(
    "--order",
    type=click.Choice(["asc", "desc"]),
    default="desc",
    show_default=True,
    help="By id: asc oldest first, desc newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of a table.")
@_dsn_option
@_schema_option
@click.pass_context
@handle_errors
def jobs_list(
    ctx: click.Context,
    statuses: tuple[str, ...],
    definition: str | None,
    channel: str | None,
    limit: int,
    offset: int,
    order: str,
    as_json: bool,
    dsn: str | None,
    schema: str,
) -> None:
    """List jobs by id, with no hidden time window: every job still in the queue."""
    status = list(statuses) or None
    with _job_manager(ctx, dsn, schema) as manager:
        found = manager.list(
            status=status,
            definition=definition,
            channel=channel,
            limit=limit,
            offset=offset,
            order=order,
        )
        total = (
            None
            if as_json
            else manager.count(status=status, definition=definition, channel=channel)
        )
    if as_json:
        _print_json([_plain(job) for job in found])
        return
    if not found:
        out_console.print(f"no jobs (of {total} matching)" if total else "no jobs match")
        return
    first = offset + 1
    direction = "newest first" if order == "desc" else "oldest first"
    caption = f"{first}-{offset + len(found)} of {total} matching, {direction}"
    out_console.print(_jobs_table(found, caption))


def _show_job(job: Job) -> None:
    """Print one job for people: its fields, attempt log and last traceback."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    rows: list[tuple[str, Text | str]] = [
        ("status", _status(job.status + (" (archived)" if job.archived else ""))),
        ("definition", Text(job.definition)),
        ("channel", Text(job.channel)),
        ("priority", str(job.priority)),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("created at", _when(job.created_at) + " UTC"),
        ("run at", _when(job.run_at) + " UTC"),
    ]
    if job.started_at is not None:
        rows.append(("started at", _when(job.started_at) + " UTC"))
    if job.finalized_at is not None:
        rows.append(("finalized at", _when(job.finalized_at) + " UTC"))
    optional: list[tuple[str, object]] = [
        ("unique key", job.unique_key),
        ("resource key", job.resource_key),
        ("locked by worker", job.locked_by),
        ("depends on", ", ".join(str(i) for i in job.depends_on)),
    ]
    rows += [(name, Text(str(value))) for name, value in optional if value not in (None, "")]
    rows.append(("payload", Text(json.dumps(job.payload, ensure_ascii=False))))
    if job.result is not None:
        rows.append(("result", Text(json.dumps(job.result, ensure_ascii=False))))
    if job.last_error:
        rows.append(("last error", Text(job.last_error)))
    for name, value in rows:
        fields.add_row(name, value)
    out_console.print(Text(f"job {job.id}", style="bold"))
    out_console.print(fields)

    attempts = job.attempts or ()
    if not attempts:
        out_console.print("no attempt ended yet")
        return
    table = _table(title="attempts", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("worker", overflow="fold")
    table.add_column("finished at (UTC)", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold")
    for attempt in attempts:
        worker = attempt.worker_name or (str(attempt.worker_id) if attempt.worker_id else "")
        table.add_row(
            str(attempt.attempt),
            _status(attempt.outcome),
            Text(worker),
            _when(attempt.finished_at),
            _duration(attempt.started_at, attempt.finished_at),
            Text(attempt.error or ""),
        )
    out_console.print(table)
    # The last traceback is the one people want; --json has every one.
    last = next((a for a in reversed(attempts) if a.traceback), None)
    if last is not None and last.traceback:
        out_console.print(Text(f"traceback of attempt {last.attempt}:", style="bold"))
        out_console.print(Text(last.traceback.rstrip()))


@jobs_group.command("show")
@click.argument("job_id", type=click.IntRange(1), metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@_dsn_option
@_schema_option
@click.pass_context
@handle_errors
def jobs_show(ctx: click.Context, job_id: int, as_json: bool, dsn: str | None, schema: str) -> None:
    """Show one job (archived ones too) with its attempts, errors and traceback."""
    with _job_manager(ctx, dsn, schema) as manager:
        job = manager.get(job_id, with_attempts=True)
    if as_json:
        _print_json(_plain(job))
    else:
        _show_job(job)


def _each(job_ids: Sequence[int], action: Callable[[int], str]) -> None:
    """Apply ``action`` to every id, one line per id; exit 1 if any was refused."""
    refused = 0
    for job_id in job_ids:
        try:
            click.echo(action(job_id))
        except (UnknownJobError, JobStateError) as exc:
            refused += 1
            _error(str(exc))
    if refused:
        sys.exit(1)


def _check_bulk(job_ids: Sequence[int], all_failed: bool, definition: str | None) -> None:
    if all_failed and job_ids:
        raise click.UsageError("give job ids or --failed, not both")
    if not all_failed and not job_ids:
        raise click.UsageError("give one or more job ids, or --failed")
    if definition is not None and not all_failed:
        raise click.UsageError("--definition only goes with --failed")


def _of(definition: str | None) -> str:
    return "" if definition is None else f" of {definition!r}"


@jobs_group.command("retry")
@click.argument("job_ids", nargs=-1, type=click.IntRange(1), metavar="[ID]...")
@click.option(
    "--failed", "all_failed", is_flag=True, help="Retry every failed job (of --definition)."
)
@click.option("--definition", metavar="NAME", help="With --failed: only this definition's jobs.")
@_dsn_option
@_schema_option
@click.pass_context
@handle_errors
def jobs_retry(
    ctx: click.Context,
    job_ids: tuple[int, ...],
    all_failed: bool,
    definition: str | None,
    dsn: str | None,
    schema: str,
) -> None:
    """Run jobs again with a fresh attempt budget (finalized ones), or now (backing off ones).

    Running and waiting jobs are refused.
    """
    _check_bulk(job_ids, all_failed, definition)
    with _job_manager(ctx, dsn, schema) as manager:
        if all_failed:
            count = manager.retry_failed(definition=definition)
            click.echo(f"retried {count} failed job(s){_of(definition)}")
            return

        def retry(job_id: int) -> str:
            return f"retried job {job_id}: now {manager.retry(job_id).status}"

        _each(job_ids, retry)


@jobs_group.command("cancel")
@click.argument("job_ids", nargs=-1, required=True, type=click.IntRange(1), metavar="ID...")
@_dsn_option
@_schema_option
@click.pass_context
@handle_errors
def jobs_cancel(ctx: click.Context, job_ids: tuple[int, ...], dsn: str | None, schema: str) -> None:
    """Cancel waiting, available or running jobs.

    A running job's function is not stopped: the attempt runs on, but its
    result is refused when it finishes, and the job stays cancelled.
    """
    with _job_manager(ctx, dsn, schema) as manager:

        def cancel(job_id: int) -> str:
            manager.cancel(job_id)
            return f"cancelled job {job_id}"

        _each(job_ids, cancel)


@jobs_group.command("delete")
@click.argument("job_ids", nargs=-1, type=click.IntRange(1), metavar="[ID]...")
@click.option(
    "--failed", "all_failed", is_flag=True, help="Delete every failed job (of --definition)."
)
@click.option("--definition", metavar="NAME", help="With --failed: only this definition's jobs.")
@click.option("--yes", "-y", is_flag=True, help="With --failed: do not ask for confirmation.")
@_dsn_option
@_schema_option
@click.pass_context
@handle_errors
def jobs_delete(
    ctx: click.Context,
    job_ids: tuple[int, ...],
    all_failed: bool,
    definition: str | None,
    yes: bool,
    dsn: str | None,
    schema: str,
) -> None:
    """Delete jobs with their attempt log.

    Running jobs, and jobs that an unfinished job depends on, are refused
    (with --failed: kept).
    """
    _check_bulk(job_ids, all_failed, definition)
    with _job_manager(ctx, dsn, schema) as manager:
        if all_failed:
            failed = manager.count(status="failed", definition=definition)
            if not failed:
                click.echo(f"no failed jobs{_of(definition)}")
                return
            if not yes:
                try:
                    confirmed = click.confirm(
                        f"delete {failed} failed job(s){_of(definition)}?", err=True
                    )
                except click.Abort:  # no answer (end of input, Ctrl-C)
                    err_console.print()  # end the prompt's line
                    confirmed = False
                if not confirmed:
                    _fail("nothing deleted: not confirmed (pass --yes to skip the question)", 1)
            count = manager.delete_failed(definition=definition)
            kept = manager.count(status="failed", definition=definition)
            note = f"; {kept} kept (unfinished jobs depend on them, or busy)" if kept else ""
            click.echo(f"deleted {count} failed job(s){_of(definition)}{note}")
            return

        def delete(job_id: int) -> str:
            manager.delete(job_id)
            return f"deleted job {job_id}"

        _each(job_ids, delete)


@main.group("definitions")
def definitions_group() -> None:
    """Inspect job definitions as stored in the database."""


def _settings(info: DefinitionInfo) -> str:
    """The settings that differ between definitions, one per line."""
    lines = [f"{info.num_attempts} attempt(s), {info.backoff} backoff"]
    if info.cron is not None:
        lines.append(f"cron {info.cron}")
    if info.repeat_interval_ms is not None:
        lines.append(f"every {info.repeat_interval_ms} ms")
    if info.release_interval_ms:
        lines.append(f"1 start per {info.release_interval_ms} ms")
    if info.max_concurrency is not None:
        lines.append(f"at most {info.max_concurrency} running")
    return "\n".join(lines)


@definitions_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of a table.")
@_dsn_option
@_schema_option
@click.pass_context
@handle_errors
def definitions_list(ctx: click.Context, as_json: bool, dsn: str | None, schema: str) -> None:
    """List the definitions stored in the database, with their jobs per status."""
    with _job_manager(ctx, dsn, schema) as manager:
        infos = manager.definitions()
    if as_json:
        _print_json([_plain(info) for info in infos])
        return
    if not infos:
        out_console.print("no definitions (a daemon or a defer writes them)")
        return
    table = _table()
    table.add_column("name", overflow="fold")
    table.add_column("channel", overflow="fold")
    table.add_column("settings", overflow="fold")
    table.add_column("heartbeat (UTC)", no_wrap=True)
    table.add_column("jobs", overflow="fold")
    for info in infos:
        counts = "\n".join(f"{n} {status}" for status, n in info.counts.items() if n)
        table.add_row(
            Text(info.name + (" (paused)" if info.paused else "")),
            Text(info.channel),
            Text(_settings(info)),
            _when(info.last_heartbeat_at),
            counts or "none",
        )
    out_console.print(table)


# -- orchestra bench ------------------------------------------------------------------------


@main.command()
@_dsn_option
@click.option(
    "--jobs",
    type=click.IntRange(100),
    default=20_000,
    show_default=True,
    help="No-op jobs per processing run, and jobs enqueued with defer_many.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes of the processing run.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Concurrency of each worker process.",
)
@click.option(
    "--single-defers",
    type=click.IntRange(10),
    default=2_000,
    show_default=True,
    help="Jobs enqueued one per transaction.",
)
@click.option(
    "--latency-jobs",
    type=click.IntRange(2),
    default=100,
    show_default=True,
    help="Jobs of the latency run.",
)
@click.option(
    "--latency-rate",
    type=click.FloatRange(0.1, 1_000),
    default=20.0,
    show_default=True,
    help="Arrival rate of the latency run, jobs per second.",
)
@click.option(
    "--idle-seconds",
    type=click.FloatRange(0.5, 600),
    default=5.0,
    show_default=True,
    help="How long the idle worker is watched.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
@handle_errors
def bench(
    ctx: click.Context,
    dsn: str | None,
    jobs: int,
    processes: int,
    concurrency: int,
    single_defers: int,
    latency_jobs: int,
    latency_rate: float,
    idle_seconds: float,
    as_json: bool,
) -> None:
    """Measure enqueue, processing, latency and idle cost next to a raw-SQL baseline.

    Runs on a throwaway schema of the configured database (dropped afterwards).
    Each figure is printed with the same measurement done by plain psycopg code,
    and their ratio: compare ratios across runs, not absolute rates.
    """
    from orchestra import _bench  # noqa: PLC0415 (keeps `orchestra --help` fast)

    _warn_password_on_argv(dsn, _dsn_source(ctx))
    settings = _bench.Settings(
        jobs=jobs,
        processes=processes,
        concurrency=concurrency,
        single_defers=single_defers,
        latency_jobs=latency_jobs,
        latency_rate=latency_rate,
        idle_seconds=idle_seconds,
    )
    resolved = Config(dsn).dsn
    runner = _bench.Bench(resolved, settings, log=lambda line: err_console.print(escape(line)))
    figures = runner.run()
    if as_json:
        _print_json(_bench.figures_as_json(figures, settings, runner.schema))
        return
    table = _table()
    for column in ("measure", "unit", "orchestra", "raw SQL", "ratio", "target"):
        table.add_column(column, justify="left" if column in ("measure", "unit") else "right")
    for f in figures:
        if f.unit == "ms":
            target = f"<= {f.target:g} ms" if f.target is not None else ""
        else:
            target = f">= {f.target:g}x" if f.target is not None else ""
        table.add_row(
            Text(f.name),
            f.unit,
            f"{f.orchestra:,.1f}",
            "" if f.baseline is None else f"{f.baseline:,.1f}",
            "" if f.ratio is None else f"{f.ratio:.2f}x",
            target,
        )
    # Piped into a file for docs/BENCHMARKS.md: wide enough to keep one line per figure.
    console = out_console if out_console.is_terminal else Console(highlight=False, width=110)
    console.print(table)
    err_console.print(
        f"{jobs} jobs, {processes} worker process(es) x concurrency {concurrency}; "
        "ratio: orchestra/raw for rates, raw/orchestra for latencies (1.00x: as good as raw SQL)"
    )


# -- the web dashboard: `orchestra dashboard` (extra `dashboard`) ---------------------------

DASHBOARD_EXTRA = ("starlette", "uvicorn", "jinja2")


@main.command()
@click.option(
    "--app",
    "app_ref",
    default=None,
    metavar="MODULE:CONFIG",
    help="Where your Config lives (its DSN and schema are used, and its definitions' cron "
    "time zones). Without it: --dsn and --schema.",
)
@_dsn_option
@_schema_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65_535), default=8080, show_default=True, help="Port."
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let people retry, cancel and delete jobs (after a confirmation). Default: read-only.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe level logged (info logs every request).",
)
@click.pass_context
@handle_errors
def dashboard(
    ctx: click.Context,
    app_ref: str | None,
    dsn: str | None,
    schema: str,
    host: str,
    port: int,
    allow_actions: bool,
    log_level: str,
) -> None:
    """Serve the web dashboard and its JSON API (/api, described by /api/openapi.json).

    Set ORCHESTRA_DASHBOARD_USER and ORCHESTRA_DASHBOARD_PASSWORD for basic auth,
    or ORCHESTRA_DASHBOARD_TOKEN for a bearer token; otherwise anyone who
    reaches the port sees the queue.
    """
    import importlib.util  # noqa: PLC0415

    missing = [name for name in DASHBOARD_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        _fail(
            f"the dashboard needs the 'dashboard' extra ({', '.join(missing)} not installed): "
            "pip install 'orchestra-queue[dashboard]'",
            1,
        )
    explicit = click.core.ParameterSource.COMMANDLINE
    if app_ref is not None and explicit in (
        ctx.get_parameter_source("dsn"),
        ctx.get_parameter_source("schema"),
    ):
        raise click.UsageError("give --app, or --dsn/--schema, not both")
    import uvicorn  # noqa: PLC0415

    from orchestra.dashboard import DashboardAuth, create_app  # noqa: PLC0415

    configure_logging("text", log_level)
    if app_ref is not None:
        config = load_app(app_ref)
    else:
        _warn_password_on_argv(dsn, _dsn_source(ctx))
        config = Config(dsn, schema=schema)
    with config:
        config.check_schema()  # SchemaNotReadyError says to run `orchestra migrate`
        auth = DashboardAuth.from_env()
        if not auth.enabled and host not in ("127.0.0.1", "localhost", "::1"):
            err_console.print(
                f"[yellow]warning:[/] serving on {escape(host)} without authentication: set "
                "ORCHESTRA_DASHBOARD_USER and ORCHESTRA_DASHBOARD_PASSWORD, or "
                "ORCHESTRA_DASHBOARD_TOKEN"
            )
        app = create_app(config, allow_actions=allow_actions, auth=auth)
        shown = f"[{host}]" if ":" in host else host
        err_console.print(
            f"dashboard of schema {config.schema!r} at {escape(config.redacted_dsn)}: "
            f"http://{escape(shown)}:{port}/ "
            f"({'actions allowed' if allow_actions else 'read-only'}, "
            f"{'authentication required' if auth.enabled else 'no authentication'})"
        )
        try:
            uvicorn.run(app, host=host, port=port, log_config=None, log_level=log_level)
        except SystemExit as exc:  # uvicorn exits 1 when it cannot bind the port
            if exc.code:
                _fail(f"the dashboard could not serve on {host}:{port} (see above)", 1)
            raise


# -- orchestra health: for probes (Kubernetes, systemd, monitoring) -------------------------
#
# Exit 0 when healthy, else 1 with one line saying why (2: usage error). One
# connection attempt bounded by --timeout-s, so a probe never hangs or retries.

HEALTH_TIMEOUT_S_DEFAULT = 5.0

#: Daemons of a role (on a host, with a name) and how fresh their heartbeats
#: are, on the database clock. The worker table holds one row per live daemon
#: (workers heartbeat every few seconds, orchestrators at each lease attempt).
_HEALTH_HEARTBEATS_SQL = """
SELECT count(*) FILTER (
           WHERE heartbeat_at >= clock_timestamp() - %(max_age_ms)s * interval '1 millisecond'
       ) AS fresh,
       count(*) AS registered,
       extract(epoch FROM clock_timestamp() - max(heartbeat_at))::float8 AS latest_age_s
FROM {schema}.worker
WHERE role = %(role)s
  AND (%(host)s::text IS NULL OR host = %(host)s::text)
  AND (%(name)s::text IS NULL OR name = %(name)s::text)
"""


class _UnhealthyError(Exception):
    """Why `orchestra health` fails, as one readable line."""


def _health_report(
    config: Config,
    *,
    role: str | None,
    host: str | None,
    name: str | None,
    max_age_s: float,
    timeout_s: float,
    report: dict[str, Any],
) -> str:
    """Check the database, the schema version and heartbeats; fill ``report``.

    Returns the summary line; raises _UnhealthyError with the reason otherwise.
    """
    from orchestra import _migrate, _sql  # noqa: PLC0415
    from orchestra.errors import DatabaseUnavailableError, SchemaNotReadyError  # noqa: PLC0415

    try:
        conn = _db.connect(config.dsn, attempts=1, timeout_s=timeout_s)
    except DatabaseUnavailableError as exc:
        raise _UnhealthyError(str(exc)) from None
    try:
        with conn:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", [f"{round(timeout_s * 1000)}"]
            )
            version = _migrate.current_version(conn, config.schema)
            required = _migrate.required_version()
            report.update(schema_version=version, required_version=required)
            if version < required:
                raise _UnhealthyError(str(SchemaNotReadyError(config.schema, version, required)))
            summary = (
                f"PostgreSQL answered, schema {config.schema!r} is at version {version} "
                f"(needs {required})"
            )
            if role is None:
                return summary
            row = conn.execute(
                _sql.render(_HEALTH_HEARTBEATS_SQL, config.schema),
                {"role": role, "host": host, "name": name, "max_age_ms": max_age_s * 1000},
            ).fetchone()
    except psycopg.Error as exc:
        raise _UnhealthyError(f"database error: {' '.join(str(exc).split())}") from None
    assert row is not None
    fresh, registered, latest_age_s = int(row[0]), int(row[1]), row[2]
    report.update(
        fresh_daemons=fresh,
        registered_daemons=registered,
        latest_heartbeat_age_s=None if latest_age_s is None else round(latest_age_s, 3),
    )
    where = "".join(
        f" {label} {value!r}" for label, value in (("named", name), ("on host", host)) if value
    )
    if not fresh:
        seen = (
            "none is registered"
            if not registered
            else f"{registered} registered, latest heartbeat {latest_age_s:.1f} s ago"
        )
        raise _UnhealthyError(
            f"no {role} daemon{where} heartbeated within {max_age_s:g} s ({seen})"
        )
    return (
        f"{summary}, {fresh} {role} daemon(s){where} heartbeated within {max_age_s:g} s "
        f"(latest {latest_age_s:.1f} s ago)"
    )


@main.command()
@click.option(
    "--app",
    "app_ref",
    default=None,
    metavar="MODULE:CONFIG",
    help="Where your Config lives (its DSN and schema are used). Without it: --dsn and --schema.",
)
@_dsn_option
@_schema_option
@click.option(
    "--role",
    type=click.Choice(["worker", "orchestrator"]),
    default=None,
    help="Also require a daemon of this role with a fresh heartbeat in the worker table "
    "(on this host, see --host and --name). Without it: database and schema only.",
)
@click.option(
    "--name",
    default=None,
    help="With --role: only daemons started with this --name (then on any host, unless "
    "--host is given).",
)
@click.option(
    "--host",
    default=None,
    help="With --role: only daemons on this host.  [default: this host's name, unless --name]",
)
@click.option(
    "--max-heartbeat-age-s",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="With --role: a heartbeat older than this is not fresh.",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(1, 300),
    default=HEALTH_TIMEOUT_S_DEFAULT,
    show_default=True,
    help="Bound of the connection and of each statement (one attempt, no retry).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
@handle_errors
def health(
    ctx: click.Context,
    app_ref: str | None,
    dsn: str | None,
    schema: str,
    role: str | None,
    name: str | None,
    host: str | None,
    max_heartbeat_age_s: float,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Exit 0 if the database answers, the schema is migrated and (--role) a daemon is alive.

    Otherwise exit 1 with one line saying why. For Kubernetes probes: readiness
    `orchestra health`, liveness `orchestra health --role worker` (the pod's own
    daemon: the host name is the pod name).
    """
    import socket  # noqa: PLC0415

    explicit = click.core.ParameterSource.COMMANDLINE
    if app_ref is not None and explicit in (
        ctx.get_parameter_source("dsn"),
        ctx.get_parameter_source("schema"),
    ):
        raise click.UsageError("give --app, or --dsn/--schema, not both")
    if app_ref is not None:
        config = load_app(app_ref)
    elif not dsn:
        # Never start the embedded PostgreSQL just to find it healthy.
        raise click.UsageError(f"no database to check: give --dsn, set ${DSN_ENV}, or --app")
    else:
        _warn_password_on_argv(dsn, _dsn_source(ctx))
        config = Config(dsn, schema=schema)
    if role is not None and host is None and name is None:
        host = socket.gethostname()
    report: dict[str, Any] = {
        "healthy": False,
        "error": None,
        "schema": config.schema,
        "schema_version": None,
        "required_version": None,
        "role": role,
        "host": host,
        "name": name,
        "fresh_daemons": None,
        "registered_daemons": None,
        "latest_heartbeat_age_s": None,
    }
    try:
        summary = _health_report(
            config,
            role=role,
            host=host,
            name=name,
            max_age_s=max_heartbeat_age_s,
            timeout_s=timeout_s,
            report=report,
        )
    except _UnhealthyError as exc:
        report["error"] = _db.redact(str(exc))
        if as_json:
            _print_json(report)
        _fail(f"unhealthy: {exc}", 1)
        return
    report["healthy"] = True
    if as_json:
        _print_json(report)
    else:
        click.echo(f"healthy: {summary}")


if __name__ == "__main__":
    main()
