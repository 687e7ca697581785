"""`orchestra dashboard`: the web dashboard (extra `dashboard`)."""

from __future__ import annotations

import click
from rich.markup import escape

from orchestra._config import Config
from orchestra.cli._app import (
    _dsn_option,
    _dsn_source,
    _fail,
    _schema_option,
    _warn_password_on_argv,
    configure_logging,
    err_console,
    handle_errors,
    load_app,
    main,
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
