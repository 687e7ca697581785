"""`orchestra health`: for probes (Kubernetes, systemd, monitoring)."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click
import psycopg
from rich.markup import escape

from orchestra import _db
from orchestra._config import Config
from orchestra._database import DSN_ENV
from orchestra._orchestrator._gauges import (
    MONITOR_HINT,
    TRANSACTION_WARNING_S_DEFAULT,
    read_vacuum_horizon,
)
from orchestra.cli._app import (
    APP_ENV,
    _fail,
    _print_json,
    check_text_options,
    err_console,
    handle_errors,
    main,
    queue_options,
    resolve_config,
)

# -- orchestra health: for probes (Kubernetes, systemd, monitoring) -------------------------
#
# Exit 0 when healthy, else 1 with one line saying why (2: usage error). One
# connection attempt bounded by --timeout-s, so a probe never hangs or retries.
#
# A transaction that holds back vacuum makes the status "degraded": a warning
# line, and still exit 0 unless --fail-on-warning (exit 3). A probe that failed
# for it would restart or unready every pod at once, which ends nothing: the
# transaction belongs to someone else.

HEALTH_TIMEOUT_S_DEFAULT = 5.0
DEGRADED_EXIT_CODE = 3


class _UnhealthyError(Exception):
    """Why `orchestra health` fails, as one readable line."""


def _jsonable(value: Any) -> Any:
    """``value`` with every datetime in it as ISO 8601 text, for --json."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _health_report(
    config: Config,
    *,
    role: str | None,
    host: str | None,
    name: str | None,
    max_age_s: float,
    max_transaction_age_s: float,
    timeout_s: float,
    report: dict[str, Any],
) -> str:
    """Check the database, the schema version, vacuum's horizon and heartbeats; fill ``report``.

    Returns the summary line (and appends to ``report["warnings"]`` what makes
    the status degraded); raises _UnhealthyError with the reason otherwise.
    """
    from orchestra import _migrate  # noqa: PLC0415
    from orchestra.errors import DatabaseUnavailableError  # noqa: PLC0415

    try:
        conn = _db.connect(config.dsn, attempts=1, timeout_s=timeout_s, **config.connect_kwargs)
    except DatabaseUnavailableError as exc:
        raise _UnhealthyError(str(exc)) from None
    try:
        # One read-only transaction, and the timeout local to it: behind a
        # transaction pooler a session setting would stay on the server
        # connection for its next client.
        with conn, conn.transaction():
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [f"{round(timeout_s * 1000)}"]
            )
            version = _migrate.current_version(conn, config.schema)
            required = _migrate.required_version()
            report.update(schema_version=version, required_version=required)
            not_ready = _migrate.readiness_error(conn, config.schema)
            if not_ready is not None:
                raise _UnhealthyError(str(not_ready))
            summary = (
                f"PostgreSQL answered, schema {config.schema!r} is at version {version} "
                f"(needs {required})"
            )
            horizon = read_vacuum_horizon(conn, config)
            report.update(_jsonable(horizon.as_dict()))
            warning = horizon.warning(max_transaction_age_s, config.schema)
            if warning is not None:
                report["warnings"].append(warning)
            elif horizon.oldest is not None and horizon.oldest.hidden:
                summary += (
                    f"; the oldest transaction (pid {horizon.oldest.pid}) is another role's: "
                    f"{MONITOR_HINT}"
                )
            try:
                with conn.transaction():  # a savepoint: the check goes on without it
                    paused = conn.execute(config.queries["health_paused"]).fetchall()
            except psycopg.errors.InsufficientPrivilege:
                # A probe's role may read no more than schema_version: what is
                # paused is then unknown (null in the JSON), not a failure.
                paused = None
            if paused is not None:
                report["paused_channels"] = [n for kind, n in paused if kind == "channel"]
                report["paused_definitions"] = [n for kind, n in paused if kind == "definition"]
            if paused:
                # Not a warning: pausing is deliberate, but a probe's reader should see it.
                summary += "; paused: " + ", ".join(f"{kind} {n!r}" for kind, n in paused)
            if role is None:
                return summary
            row = conn.execute(
                config.queries["health_heartbeats"],
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
@queue_options()
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
    "--max-transaction-age-s",
    type=click.FloatRange(0),
    default=TRANSACTION_WARNING_S_DEFAULT,
    show_default=True,
    help="Warn (status degraded) when the transaction holding the oldest snapshot on the "
    "queue's database has been open this long: it keeps autovacuum from cleaning the job "
    "table. 0 warns about any.",
)
@click.option(
    "--fail-on-warning",
    is_flag=True,
    help=f"Exit {DEGRADED_EXIT_CODE} instead of 0 when the status is degraded (for monitoring "
    "checks; keep it off in Kubernetes probes, which would restart or unready every pod).",
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
    schema: str | None,
    role: str | None,
    name: str | None,
    host: str | None,
    max_heartbeat_age_s: float,
    max_transaction_age_s: float,
    fail_on_warning: bool,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Exit 0 if the database answers, the schema is migrated and (--role) a daemon is alive.

    Otherwise exit 1 with one line saying why. For Kubernetes probes: readiness
    `orchestra health`, liveness `orchestra health --role worker` (the pod's own
    daemon: the host name is the pod name). A transaction open longer than
    --max-transaction-age-s, which keeps autovacuum from cleaning the job
    table, makes the status degraded: a warning line, exit 0 (3 with
    --fail-on-warning).
    """
    import socket  # noqa: PLC0415

    check_text_options(name=name, host=host)
    if app_ref is None and not dsn:
        # Never start the embedded PostgreSQL just to find it healthy.
        raise click.UsageError(
            f"no database to check: give --dsn, set ${DSN_ENV}, or --app (${APP_ENV})"
        )
    config = resolve_config(ctx, app_ref, dsn, schema)
    if role is not None and host is None and name is None:
        host = socket.gethostname()
    report: dict[str, Any] = {
        "healthy": False,
        "status": "unhealthy",
        "error": None,
        "warnings": [],
        "schema": config.schema,
        "schema_version": None,
        "required_version": None,
        "role": role,
        "host": host,
        "name": name,
        "fresh_daemons": None,
        "registered_daemons": None,
        "latest_heartbeat_age_s": None,
        "max_transaction_age_s": max_transaction_age_s,
        "oldest_transaction": None,
        "holders": None,
        "job_table": None,
        "paused_channels": None,
        "paused_definitions": None,
    }
    try:
        summary = _health_report(
            config,
            role=role,
            host=host,
            name=name,
            max_age_s=max_heartbeat_age_s,
            max_transaction_age_s=max_transaction_age_s,
            timeout_s=timeout_s,
            report=report,
        )
    except _UnhealthyError as exc:
        report["error"] = _db.redact(str(exc))
        report["warnings"] = [_db.redact(w) for w in report["warnings"]]
        if as_json:
            _print_json(report)
        _fail(f"unhealthy: {exc}", 1)
        return
    report["healthy"] = True
    warnings = [_db.redact(w) for w in report["warnings"]]
    report["warnings"] = warnings
    report["status"] = "degraded" if warnings else "healthy"
    if as_json:
        _print_json(report)
    else:
        click.echo(f"{report['status']}: {summary}")
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if warnings and fail_on_warning:
        sys.exit(DEGRADED_EXIT_CODE)
