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
from orchestra.handlers import JsonFormatter

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


def check_text_options(**options: str | None) -> None:
    """ConfigurationError (exit 2) if an option's text holds a control or format character.

    Names never hold one, so such a value is a mistake, or an attempt to forge log lines.
    """
    for option, value in options.items():
        if value is not None:
            check_printable(value, "--" + option.replace("_", "-"))


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


#: Tables go to stdout; highlight off so that ids and numbers are not restyled.
out_console = Console(highlight=False)


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _table(**kwargs: Any) -> Table:
    """A table that stays readable at 80 columns (a pipe, a log): light borders only."""
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, **kwargs)
