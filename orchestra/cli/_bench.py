"""`orchestra bench`: speed next to the lean floor (and, on request, PgQueuer)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from orchestra import _db
from orchestra._config import Config
from orchestra._database import LISTEN_DSN_ENV, TRANSACTION_POOLING_ENV
from orchestra.cli._app import (
    _dsn_option,
    _dsn_source,
    _print_json,
    _remember_dsn,
    _table,
    _warn_password_on_argv,
    err_console,
    handle_errors,
    main,
    out_console,
)
from orchestra.errors import ConfigurationError

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
@click.option(
    "--finalized-rows",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Also process the jobs again with this many finalized rows left in the table.",
)
@click.option(
    "--peers",
    type=click.Choice(["pgqueuer"]),
    multiple=True,
    help="Also run the workloads through this queue, in a schema of its own "
    "(needs orchestra-queue[bench]).",
)
@click.option(
    "--transaction-pooling",
    is_flag=True,
    default=None,
    help="--dsn leads to PgBouncer in transaction mode: orchestra runs through it as a "
    "Config(transaction_pooling=True) does, the lean floor and PgQueuer on --listen-dsn. "
    f"Default: ${TRANSACTION_POOLING_ENV}.",
)
@click.option(
    "--listen-dsn",
    default=None,
    metavar="DSN",
    callback=_remember_dsn,
    help="Direct connection to the same database: orchestra's workers LISTEN on it and, "
    "with --transaction-pooling (which needs it), the lean floor, PgQueuer and the bench's "
    f"own loads run on it. Default: ${LISTEN_DSN_ENV}.",
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
    finalized_rows: int,
    peers: tuple[str, ...],
    transaction_pooling: bool | None,
    listen_dsn: str | None,
    as_json: bool,
) -> None:
    """Measure enqueue, processing, latency and idle cost next to the lean floor.

    Runs on a throwaway schema of the configured database (dropped afterwards).
    The lean floor is the least a SKIP LOCKED queue can do, on a table of the
    bench's own (one partial index, finished rows deleted): each figure is
    printed next to it, and their ratio is what orchestra's design costs.
    Compare ratios across runs, not absolute rates.

    Behind PgBouncer in transaction mode, point --dsn at PgBouncer and add
    --transaction-pooling --listen-dsn DIRECT (or their variables): orchestra's
    producers and workers go through the pooler, the floor and PgQueuer stay on
    the direct connection as the baseline.
    """
    # Imported here only: the bench is no part of what a Config or a daemon loads,
    # and `orchestra --help` stays fast.
    from orchestra import _bench  # noqa: PLC0415

    _warn_password_on_argv(dsn, _dsn_source(ctx))
    if (
        listen_dsn
        and ctx.get_parameter_source("listen_dsn") is click.core.ParameterSource.COMMANDLINE
        and _db.redact_dsn(listen_dsn) != listen_dsn
    ):
        err_console.print(
            "[yellow]warning:[/] the --listen-dsn on the command line contains a password, "
            f"which other users can read from the process list; use ${LISTEN_DSN_ENV} or "
            "~/.pgpass instead"
        )
    if "pgqueuer" in peers:
        try:
            from orchestra._bench import _pgqueuer  # noqa: F401, PLC0415
        except ImportError:
            raise ConfigurationError(
                "--peers",
                "PgQueuer is not installed (or older than 1.6): "
                "pip install 'orchestra-queue[bench]'",
            ) from None
    settings = _bench.Settings(
        jobs=jobs,
        processes=processes,
        concurrency=concurrency,
        single_defers=single_defers,
        latency_jobs=latency_jobs,
        latency_rate=latency_rate,
        idle_seconds=idle_seconds,
        finalized_rows=finalized_rows,
        peers=tuple(dict.fromkeys(peers)),
    )
    for warning in settings.warnings():
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    # Resolved as a Config resolves them (an option, else its variable), and checked,
    # before anything connects.
    resolved = Config(dsn, transaction_pooling=transaction_pooling, listen_dsn=listen_dsn)
    listen = resolved.listen_dsn
    if not resolved.transaction_pooling and listen == resolved.dsn:
        listen = None  # a Config without one LISTENs on its DSN
    runner = _bench.Bench(
        resolved.dsn,
        settings,
        log=lambda line: err_console.print(escape(line)),
        transaction_pooling=resolved.transaction_pooling,
        listen_dsn=listen,
    )
    figures = runner.run()
    if as_json:
        _print_json(_bench.figures_as_json(runner, figures))
        return
    with_peer = runner.pgqueuer is not None
    columns = ["measure", "unit", "orchestra", "lean floor", "vs floor"]
    if with_peer:
        columns += ["PgQueuer", "vs PgQueuer"]
    table = _table(show_edge=False, collapse_padding=True)
    for column in columns:
        table.add_column(column, justify="left" if column in ("measure", "unit") else "right")
    for f in figures:
        row: list[Text | str] = [
            Text(f.name),
            f.unit,
            _value(f.orchestra),
            _value(f.floor),
            _times(f.ratio_floor),
        ]
        if with_peer:
            row += [_value(f.pgqueuer), _times(f.ratio_pgqueuer)]
        table.add_row(*row)
    # Piped into a file: wide enough for one line per figure, narrow enough to read.
    console = out_console if out_console.is_terminal else Console(highlight=False, width=100)
    console.print(table)
    err_console.print(
        f"{jobs:,} jobs, {processes} worker process(es) x concurrency {concurrency}; "
        "vs: orchestra/other for rates, other/orchestra for latencies "
        "(1.00x: as good, higher is better)"
    )
    paths = runner.paths()
    err_console.print(f"orchestra through {escape(paths['orchestra'])}")
    others = "lean floor and PgQueuer" if "pgqueuer" in paths else "lean floor"
    err_console.print(f"{others} through {escape(paths['floor'])}")
    if runner.pgqueuer is not None:
        peer = runner.pgqueuer.describe()
        err_console.print(
            f"PgQueuer {peer['version']} ({peer['driver']}): {peer['processes']} worker "
            f"process(es), batch_size {peer['batch_size']}, max_concurrent_tasks "
            f"{peer['max_concurrent_tasks']}, schema {peer['schema']} (dropped)"
        )


def _value(value: float | None) -> str:
    if value is None:
        return ""
    # Tenths matter for milliseconds and percents, not for thousands of jobs a second.
    return f"{value:,.0f}" if abs(value) >= 1_000 else f"{value:,.1f}"


def _times(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"
