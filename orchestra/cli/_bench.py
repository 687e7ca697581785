"""`orchestra bench`: speed next to a raw-SQL baseline."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from orchestra._config import Config
from orchestra.cli._app import (
    _dsn_option,
    _dsn_source,
    _print_json,
    _table,
    _warn_password_on_argv,
    err_console,
    handle_errors,
    main,
    out_console,
)

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
        finalized_rows=finalized_rows,
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
