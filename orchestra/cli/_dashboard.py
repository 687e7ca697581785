"""`orchestra dashboard`: the web dashboard (extra `dashboard`)."""

from __future__ import annotations

import errno
import socket

import click
from rich.markup import escape

from orchestra.cli._app import (
    _fail,
    configure_logging,
    err_console,
    handle_errors,
    main,
    queue_options,
    resolve_config,
)

# -- the web dashboard: `orchestra dashboard` (extra `dashboard`) ---------------------------

DASHBOARD_EXTRA = ("starlette", "uvicorn", "jinja2")


@main.command()
@queue_options()
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
    schema: str | None,
    host: str,
    port: int,
    allow_actions: bool,
    log_level: str,
) -> None:
    """Serve the web dashboard and its JSON API (/api, described by /api/openapi.json).

    Set ORCHESTRA_DASHBOARD_USER and ORCHESTRA_DASHBOARD_PASSWORD for basic auth,
    or ORCHESTRA_DASHBOARD_TOKEN for a bearer token; otherwise anyone who
    reaches the port sees the queue. With --app, its definitions' cron time
    zones are shown too.
    """
    import importlib.util  # noqa: PLC0415

    missing = [name for name in DASHBOARD_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        _fail(
            f"the dashboard needs the 'dashboard' extra ({', '.join(missing)} not installed): "
            "pip install 'orchestra-queue[dashboard]'",
            1,
        )
    import uvicorn  # noqa: PLC0415

    from orchestra.dashboard import DashboardAuth, create_app  # noqa: PLC0415

    configure_logging("text", log_level)
    config = resolve_config(ctx, app_ref, dsn, schema)
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
        # Tried before the line that says where it listens: a busy port is one
        # error line, and that line is only printed when it is true.
        _check_port(host, port)
        shown = f"[{host}]" if ":" in host else host
        err_console.print(
            f"dashboard of schema {config.schema!r} at {escape(config.redacted_dsn)}: "
            f"http://{escape(shown)}:{port}/ "
            f"({'actions allowed' if allow_actions else 'read-only'}, "
            f"{'authentication required' if auth.enabled else 'no authentication'})"
        )
        try:
            uvicorn.run(app, host=host, port=port, log_config=None, log_level=log_level)
        except SystemExit as exc:  # the port was taken since it was tried: uvicorn exits 1
            if exc.code:
                _fail(f"the dashboard could not listen on {host}:{port} (see above)", 1)
            raise


def _check_port(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will, and let go; exit 1 with one line if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason += ": another program listens there (choose another --port)"
            _fail(f"the dashboard cannot listen on {host}:{port}: {reason}", 1)
