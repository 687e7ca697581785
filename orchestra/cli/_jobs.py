"""`orchestra jobs ...` and `orchestra definitions ...`: job management."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from orchestra import _db
from orchestra._checks import check_tags
from orchestra._jobs import Jobs
from orchestra._names import escape_unprintable
from orchestra._records import STATUSES, DefinitionInfo, GraphNode, Job, JobGraph
from orchestra.cli._app import (
    _fail,
    _print_json,
    _table,
    check_text_options,
    err_console,
    handle_errors,
    main,
    out_console,
    queue_options,
    resolve_config,
)
from orchestra.errors import (
    JobStateError,
    UnknownJobError,
)

# -- job management: `orchestra jobs ...` and `orchestra definitions ...` ------------------
#
# Thin wrappers over Config.jobs (orchestra/_jobs.py): every rule lives there.
# Tables for people on stdout, or one JSON document with --json for programs;
# errors on stderr, one line each. For several ids, each id is tried and
# reported on its own, and the exit code is 1 if any of them failed.

LIST_LIMIT_DEFAULT = 50
_STATUS_STYLES = {
    "waiting": "magenta",
    "scheduled": "bright_blue",
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
def _job_manager(
    ctx: click.Context, app_ref: str | None, dsn: str | None, schema: str | None
) -> Iterator[Jobs]:
    """Config.jobs for the command's --app, --dsn and --schema, on a schema known to be migrated."""
    with resolve_config(ctx, app_ref, dsn, schema) as config:
        config.check_schema()  # SchemaNotReadyError says to run `orchestra migrate`
        yield config.jobs


def _json_value(_instance: Any, _field: Any, value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _plain(value: Job | DefinitionInfo) -> dict[str, Any]:
    """A Job or DefinitionInfo as JSON-able data (datetimes in ISO 8601)."""
    return attrs.asdict(value, value_serializer=_json_value)


def _when(value: dt.datetime | None) -> str:
    """A timestamp for people, in UTC to the second (--json has the full precision)."""
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: dt.datetime, end: dt.datetime) -> str:
    seconds = max(0.0, (end - start).total_seconds())
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _shown(text: str, keep: str = "") -> Text:
    """``text`` for a terminal: control characters (but ``keep``) written as escapes.

    Keys, errors and tracebacks come from applications and job functions: an
    escape sequence in one must not drive the terminal of whoever reads it.
    """
    return Text(escape_unprintable(text, keep))


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLES.get(status, ""))


def progress_text(progress: Any) -> str:
    """A job's progress for people: ``30%``, ``3/10 (30%)``, or its JSON cut short."""
    if progress is None:
        return ""
    if isinstance(progress, int | float) and not isinstance(progress, bool):
        return f"{progress:.0%}"
    if isinstance(progress, dict):
        done, total = progress.get("done"), progress.get("total")
        numbers = [v for v in (done, total) if isinstance(v, int | float)]
        if len(numbers) == 2 and not any(isinstance(v, bool) for v in (done, total)):
            share = f" ({done / total:.0%})" if total else ""
            return f"{done:g}/{total:g}{share}"
    return _one_line(json.dumps(progress, ensure_ascii=False), limit=40)


def _one_line(text: str | None, limit: int = 80) -> str:
    """The first line of ``text``, cut at ``limit`` characters (tables stay one row per item)."""
    if not text:
        return ""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


#: Least width worth giving the last error in the default listing; below it
#: the column is left out (``jobs show`` and ``--wide`` have it whole).
ERROR_MIN_CHARS = 12
#: What rich puts between two columns of a _table() without edges: one cell's
#: padding, the divider and the next one's.
GAP_CHARS = 3


def _table_width(widths: Sequence[int]) -> int:
    return sum(widths) + GAP_CHARS * (len(widths) - 1)


def _jobs_table(found: Sequence[Job], *, wide: bool) -> tuple[Table, int]:
    """The table of ``jobs list``, and the width it needs to print without folding.

    By default it fits the console (80 columns in a pipe): id, definition,
    status, attempt and the last error cut to what is left. No cell ever
    wraps, so a name is never broken across lines. ``wide`` adds channel,
    priority and times (and progress when a job reported some), and keeps
    every cell whole however long the line. Tags get a column when a job has
    some.
    """
    columns: list[tuple[str, str, list[Text | str]]] = [
        ("id", "right", [str(job.id) for job in found]),
        ("definition", "left", [_shown(job.definition) for job in found]),
    ]
    if wide:
        columns.append(("channel", "left", [_shown(job.channel) for job in found]))
    columns.append(("status", "left", [_status(job.status) for job in found]))
    if any(job.tags for job in found):  # only when there are some to show
        columns.append(("tags", "left", [_shown(",".join(job.tags)) for job in found]))
    if wide:
        columns.append(("priority", "right", [str(job.priority) for job in found]))
    columns.append(("attempt", "right", [f"{job.attempt}/{job.max_attempts}" for job in found]))
    if wide:
        columns += [
            ("run at (UTC)", "left", [_when(job.run_at) for job in found]),
            ("created at (UTC)", "left", [_when(job.created_at) for job in found]),
            ("finalized at (UTC)", "left", [_when(job.finalized_at) for job in found]),
        ]
        if any(job.progress is not None for job in found):
            columns.append(
                ("progress", "left", [_shown(progress_text(job.progress)) for job in found])
            )
    widths = [max(len(header), *(len(cell) for cell in cells)) for header, _, cells in columns]
    errors = [_one_line(job.last_error, limit=10_000) for job in found]
    if wide:
        error_chars = max(len("last error"), *(len(error) for error in errors))
    else:
        error_chars = out_console.width - _table_width([*widths, 0])
        if any(errors) and error_chars < ERROR_MIN_CHARS:
            error_chars = 0  # too narrow to say anything useful: left out
    if error_chars > 0 and any(errors):
        shown = [
            error if len(error) <= error_chars else error[: error_chars - 1] + "…"
            for error in errors
        ]
        columns.append(("last error", "left", [_shown(error) for error in shown]))
        widths.append(max(len("last error"), *(len(error) for error in shown)))
    table = _table(show_edge=False)
    for (header, justify, _), width in zip(columns, widths, strict=True):
        # Only names and errors give way on a console too narrow for the rest.
        yields = header in ("definition", "channel", "tags", "last error")
        table.add_column(
            header,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            min_width=None if yields else width,
        )
    for row in zip(*(cells for _, _, cells in columns), strict=True):
        table.add_row(*row)
    return table, _table_width(widths)


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
@click.option("--tag", metavar="TAG", help="Only jobs deferred with this tag.")
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
@click.option(
    "--wide",
    is_flag=True,
    help="Every column (channel, priority, times, progress when reported) and whole errors, "
    "however long the lines.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of a table.")
@queue_options()
@click.pass_context
@handle_errors
def jobs_list(
    ctx: click.Context,
    statuses: tuple[str, ...],
    definition: str | None,
    channel: str | None,
    tag: str | None,
    limit: int,
    offset: int,
    order: str,
    wide: bool,
    as_json: bool,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """List jobs by id, with no hidden time window: every job still in the queue.

    The table fits the terminal (80 columns in a pipe), with colour only on a
    terminal (NO_COLOR turns it off); --wide shows every column, --json
    everything.
    """
    check_text_options(definition=definition, channel=channel, tag=tag)
    if tag is not None:
        check_tags([tag], "--tag")
    status = list(statuses) or None
    with _job_manager(ctx, app_ref, dsn, schema) as manager:
        found = manager.list(
            status=status,
            definition=definition,
            channel=channel,
            tag=tag,
            limit=limit,
            offset=offset,
            order=order,
        )
        total = (
            None
            if as_json
            else manager.count(status=status, definition=definition, channel=channel, tag=tag)
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
    if not wide:
        caption += " (--wide: channel, priority, times)"
    table, width = _jobs_table(found, wide=wide)
    if not wide or width <= out_console.width:
        out_console.print(table)  # on a very narrow console rich cuts the longest names
    else:  # lines as long as they need, never folded
        Console(
            highlight=False,
            width=width,
            force_terminal=out_console.is_terminal,
            no_color=out_console.no_color,
        ).print(table)
    out_console.print(caption)


def _graph_label(node: GraphNode) -> Text:
    """``job 12  fetch  succeeded``, or ``job 12  (no longer kept)``."""
    label = Text(f"job {node.id}  ", style="bold")
    if node.definition is None or node.status is None:
        return label.append("(no longer kept by the history)", style="dim")
    return label.append_text(_shown(node.definition)).append("  ").append_text(_status(node.status))


def _graph_tree(graph: JobGraph, title: str, side: str) -> Tree:
    """The jobs of one side of ``graph`` as a tree from the job: each job under the
    one it was reached from. A job reached twice (a diamond) is expanded where it
    was listed first and marked where it comes again; at most ``2 * graph.limit``
    lines."""
    tree = Tree(Text(title, style="bold"))
    budget = 2 * graph.limit
    listed: set[int] = {graph.job_id}

    def children(node_id: int) -> list[GraphNode]:
        if side == "upstream":
            node = graph.node(node_id)
            found = [graph.node(i) for i in node.depends_on] if node is not None else []
            return [n for n in found if n is not None and n.side == side]
        return [n for n in graph.dependents(node_id) if n.side == side]

    stack: list[tuple[Tree, int]] = [(tree, graph.job_id)]
    while stack:
        branch, node_id = stack.pop()
        added: list[tuple[Tree, int]] = []
        for child in children(node_id):
            if budget == 0:
                branch.add(Text("… (cut: too many lines; --json lists every job)", style="dim"))
                return tree
            budget -= 1
            label = _graph_label(child)
            if child.id in listed:
                branch.add(label.append("  (again: expanded where listed first)", style="dim"))
                continue
            listed.add(child.id)
            added.append((branch.add(label), child.id))
        stack += reversed(added)  # depth first, in id order
    return tree


def _show_graph(graph: JobGraph) -> None:
    """Print the jobs ``graph``'s job depends on and those that depend on it, as trees."""
    for title, side, cut in (
        ("dependencies", "upstream", graph.upstream_truncated),
        ("dependents", "downstream", graph.downstream_truncated),
    ):
        jobs = [node for node in graph.nodes if node.side == side]
        if not jobs:
            continue
        heading = f"{title} ({len(jobs)} job{'' if len(jobs) == 1 else 's'}"
        heading += f", cut at the nearest {graph.limit})" if cut else ")"
        out_console.print(_graph_tree(graph, heading, side))


def _show_job(job: Job, graph: JobGraph | None = None) -> None:
    """Print one job for people: its fields, its dependency graph, attempt log and
    last traceback."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    rows: list[tuple[str, Text | str]] = [
        ("status", _status(job.status)),
        ("definition", _shown(job.definition)),
        ("channel", _shown(job.channel)),
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
        ("tags", ", ".join(job.tags)),
    ]
    rows += [(name, _shown(str(value))) for name, value in optional if value not in (None, "")]
    if job.meta:
        rows.append(("meta", _shown(json.dumps(job.meta, ensure_ascii=False))))
    if job.progress is not None:
        rows.append(("progress", _shown(progress_text(job.progress))))
    rows.append(("payload", _shown(json.dumps(job.payload, ensure_ascii=False))))
    if job.result is not None:
        rows.append(("result", _shown(json.dumps(job.result, ensure_ascii=False))))
    if job.last_error:
        rows.append(("last error", _shown(job.last_error, "\n\t")))
    for name, value in rows:
        fields.add_row(name, value)
    out_console.print(Text(f"job {job.id}", style="bold"))
    out_console.print(fields)
    if graph is not None:
        _show_graph(graph)

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
            _shown(worker),
            _when(attempt.finished_at),
            _duration(attempt.started_at, attempt.finished_at),
            _shown(attempt.error or "", "\n\t"),
        )
    out_console.print(table)
    # The last traceback is the one people want; --json has every one.
    last = next((a for a in reversed(attempts) if a.traceback), None)
    if last is not None and last.traceback:
        out_console.print(Text(f"traceback of attempt {last.attempt}:", style="bold"))
        out_console.print(_shown(last.traceback.rstrip(), "\n\t"))


@jobs_group.command("show")
@click.argument("job_id", type=click.IntRange(1), metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@queue_options()
@click.pass_context
@handle_errors
def jobs_show(
    ctx: click.Context,
    job_id: int,
    as_json: bool,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """Show one job (finished ones too) with its attempts, errors and traceback.

    Also the jobs it depends on and those that depend on it, with their
    status, as two trees (at most 200 jobs each way, the nearest first);
    --json has them as "graph".
    """
    with _job_manager(ctx, app_ref, dsn, schema) as manager:
        job = manager.get(job_id, with_attempts=True)
        graph = manager.graph(job_id)
    if as_json:
        _print_json({**_plain(job), "graph": attrs.asdict(graph)})
    else:
        _show_job(job, graph)


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
    check_text_options(definition=definition)
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
@queue_options()
@click.pass_context
@handle_errors
def jobs_retry(
    ctx: click.Context,
    job_ids: tuple[int, ...],
    all_failed: bool,
    definition: str | None,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """Run jobs again with a fresh attempt budget (finalized ones), or now (backing off ones).

    Running and waiting jobs are refused.
    """
    _check_bulk(job_ids, all_failed, definition)
    with _job_manager(ctx, app_ref, dsn, schema) as manager:
        if all_failed:
            count = manager.retry_failed(definition=definition)
            click.echo(f"retried {count} failed job(s){_of(definition)}")
            return

        def retry(job_id: int) -> str:
            return f"retried job {job_id}: now {manager.retry(job_id).status}"

        _each(job_ids, retry)


@jobs_group.command("cancel")
@click.argument("job_ids", nargs=-1, required=True, type=click.IntRange(1), metavar="ID...")
@queue_options()
@click.pass_context
@handle_errors
def jobs_cancel(
    ctx: click.Context,
    job_ids: tuple[int, ...],
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """Cancel waiting, available or running jobs.

    A running job is stopped: its worker cancels an async function, terminates
    the child process running it, or makes a sync function's ctx.should_stop
    true (the function stops when it returns). The job stays cancelled and is
    not retried. A finished job or an unknown id is refused, one line each.
    """
    with _job_manager(ctx, app_ref, dsn, schema) as manager:

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
@queue_options()
@click.pass_context
@handle_errors
def jobs_delete(
    ctx: click.Context,
    job_ids: tuple[int, ...],
    all_failed: bool,
    definition: str | None,
    yes: bool,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """Delete jobs with their attempt log.

    Running jobs, and jobs that an unfinished job depends on, are refused
    (with --failed: kept).
    """
    _check_bulk(job_ids, all_failed, definition)
    with _job_manager(ctx, app_ref, dsn, schema) as manager:
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
@queue_options()
@click.pass_context
@handle_errors
def definitions_list(
    ctx: click.Context,
    as_json: bool,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """List the definitions stored in the database, with their jobs per status."""
    with _job_manager(ctx, app_ref, dsn, schema) as manager:
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
            _shown(info.name + (" (paused)" if info.paused else "")),
            _shown(info.channel),
            Text(_settings(info)),
            _when(info.last_heartbeat_at),
            counts or "none",
        )
    out_console.print(table)
