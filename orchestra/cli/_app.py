"""The ``orchestra`` command group, and what every command shares: options, errors, output.

Exit codes: 0 success, 1 runtime error (database down, schema not ready, a
crash), 2 usage error (bad option, --app that does not import). Errors are one
readable line, never a traceback, and never show a password.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestra import __version__, _db
from orchestra._config import Config
from orchestra._database import DEFAULT_SCHEMA, DSN_ENV
from orchestra._names import check_printable
from orchestra.errors import (
    AppImportError,
    ConfigurationError,
    OrchestraError,
)
from orchestra.handlers import JsonFormatter, TextFormatter


def _colour_only_on_a_terminal(stream: Any) -> bool | None:
    """``force_terminal`` for a Console on ``stream``: False unless it is a terminal.

    Rich would also colour a pipe or a file when FORCE_COLOR or TTY_COMPATIBLE
    is set in the environment; output meant for files and other programs
    stays plain. On a terminal rich decides (and honours NO_COLOR).
    """
    try:
        return None if stream.isatty() else False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# soft_wrap: an error stays one line even when stderr is a pipe, not a terminal.
err_console = Console(
    stderr=True,
    highlight=False,
    soft_wrap=True,
    force_terminal=_colour_only_on_a_terminal(sys.stderr),
)
F = TypeVar("F", bound=Callable[..., Any])

APP_ENV = "ORCHESTRA_APP"
SCHEMA_ENV = "ORCHESTRA_SCHEMA"

#: The one statement of where a command finds its queue (resolve_config applies it).
WHERE_HELP = (
    "Where the queue is: every command that uses it (all but demo and bench, which make "
    "schemas of their own) takes --app, --dsn and --schema. Each comes from its option, "
    f"else its environment variable (${APP_ENV}, ${DSN_ENV}, ${SCHEMA_ENV}), else the "
    "Config that the app names, else the default: no app, the embedded PostgreSQL, schema "
    f"{DEFAULT_SCHEMA}. So `export {SCHEMA_ENV}=billing` once serves every command that "
    "follows. A daemon runs its app's definitions, so it takes only that Config's DSN and "
    "schema."
)
APP_HELP = (
    "Where your Config lives, e.g. myapp.jobs:config (a function returning one works too). "
    f"Default: ${APP_ENV}."
)
DSN_HELP = (
    f"PostgreSQL connection string. Default: ${DSN_ENV}, else the app's Config's, else the "
    "embedded PostgreSQL. Prefer the environment variable or ~/.pgpass for passwords: argv "
    "is visible to other users."
)
SCHEMA_HELP = (
    f"PostgreSQL schema holding the queue (lower-case letters, digits, _). Default: "
    f"${SCHEMA_ENV}, else the app's Config's, else {DEFAULT_SCHEMA}."
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


def _remember_dsn(_ctx: click.Context, _param: click.Parameter, dsn: str | None) -> str | None:
    # Known from the start, the password is hidden from every error this command prints.
    _db.remember_dsn(dsn)
    return dsn


def _dsn_option(function: F) -> F:
    return click.option(
        "--dsn",
        envvar=DSN_ENV,
        default=None,
        metavar="DSN",
        help=DSN_HELP,
        callback=_remember_dsn,
    )(function)


def queue_options(*, app_required: bool = False) -> Callable[[F], F]:
    """--app, --dsn and --schema (parameters ``app_ref``, ``dsn``, ``schema``); see WHERE_HELP."""

    def decorate(function: F) -> F:
        function = click.option(
            "--schema", envvar=SCHEMA_ENV, default=None, metavar="NAME", help=SCHEMA_HELP
        )(function)
        function = _dsn_option(function)
        return click.option(
            "--app",
            "app_ref",
            envvar=APP_ENV,
            required=app_required,
            default=None,
            metavar="MODULE:CONFIG",
            help=APP_HELP
            + (
                " The daemon runs the definitions that importing it registers, on its "
                "Config's DSN and schema."
                if app_required
                else " Its DSN and schema are used unless --dsn/--schema or their variables "
                "say otherwise."
            ),
        )(function)

    return decorate


def _same_dsn(first: str, second: str) -> bool:
    if first == second:
        return True
    try:
        return conninfo_to_dict(first) == conninfo_to_dict(second)
    except psycopg.Error:
        return False


def resolve_config(
    ctx: click.Context,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
    *,
    runs_definitions: bool = False,
) -> Config:
    """The Config a command works on: option, else environment variable, else app, else default.

    Click has already put each option's value, else its variable's, in
    ``app_ref``, ``dsn`` and ``schema``; what is still None comes from the
    app's Config, else the defaults. A DSN or schema that overrides the app's
    is also exported as its variable before the app is imported, so that an
    app building its Config from the environment follows it.

    ``runs_definitions`` (the daemon): the app is required, and the DSN and
    schema must be the app's own, because its definitions are bound to that
    Config; a different one is a ConfigurationError (exit 2) naming both.
    """
    _warn_password_on_argv(dsn, _dsn_source(ctx))
    if app_ref is None:
        return Config(dsn, schema=schema if schema is not None else DEFAULT_SCHEMA)
    if dsn is not None:
        os.environ[DSN_ENV] = dsn
    if schema is not None:
        os.environ[SCHEMA_ENV] = schema
    app = load_app(app_ref)
    same_schema = schema is None or schema == app.schema
    # A Config without a DSN of its own reads the variable set above: no server is started.
    same_dsn = dsn is None or _same_dsn(app.dsn, dsn)
    if same_schema and same_dsn:
        return app
    if runs_definitions:
        if not same_schema:
            raise ConfigurationError(
                _source_label(ctx, "schema", SCHEMA_ENV),
                f"{schema!r} is not the schema of the Config that --app names ({app.schema!r}), "
                "whose definitions the daemon runs: make them agree",
            )
        raise ConfigurationError(
            _source_label(ctx, "dsn", DSN_ENV),
            f"{_db.redact_dsn(dsn or '')} is not the DSN of the Config that --app names "
            f"({app.redacted_dsn}), whose definitions the daemon runs: make them agree",
        )
    config = Config(
        dsn if dsn is not None else app.dsn,
        schema=schema if schema is not None else app.schema,
        max_payload_bytes=app.max_payload_bytes,
        pool_max_size=app.pool_max_size,
        connect_attempts=app.connect_attempts,
        # Not the app's listen DSN: it leads to the app's database, not to this one.
        transaction_pooling=app.transaction_pooling,
    )
    for definition in app.definitions.values():  # the dashboard reads their cron time zones
        config.register(definition)
    return config


def _source_label(ctx: click.Context, parameter: str, variable: str) -> str:
    """``--option`` or ``$VARIABLE``: where a parameter's value came from, for an error."""
    if ctx.get_parameter_source(parameter) is click.core.ParameterSource.ENVIRONMENT:
        return f"${variable}"
    return f"--{parameter}"


def check_text_options(**options: str | None) -> None:
    """ConfigurationError (exit 2) if an option's text holds a control or format character.

    Names never hold one, so such a value is a mistake, or an attempt to forge log lines.
    """
    for option, value in options.items():
        if value is not None:
            check_printable(value, "--" + option.replace("_", "-"))


def _dsn_source(ctx: click.Context) -> str:
    source = ctx.get_parameter_source("dsn")
    return "argv" if source is click.core.ParameterSource.COMMANDLINE else "env"


def configure_logging(log_format: str, level: str) -> None:
    """Log to stderr as text (for people) or JSON lines (for collectors)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
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


MAIN_HELP = f"""orchestra: a PostgreSQL-backed job queue and scheduling orchestrator.

Workers claim and run jobs; orchestrators schedule and keep the queue
healthy. Both share one PostgreSQL schema.

{WHERE_HELP}
"""


@click.group(
    help=MAIN_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="orchestra")
def main() -> None:
    """The ``orchestra`` command group (MAIN_HELP is its --help)."""


#: Tables go to stdout; highlight off so that ids and numbers are not restyled.
out_console = Console(highlight=False, force_terminal=_colour_only_on_a_terminal(sys.stdout))


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _table(**kwargs: Any) -> Table:
    """A table that stays readable at 80 columns (a pipe, a log): light borders only."""
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, **kwargs)
