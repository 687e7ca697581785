"""`orchestra pause` and `orchestra resume`: stop and restart the claiming of a channel's
or a definition's jobs.

Thin wrappers over ``config.channels`` and ``config.definitions``
(orchestra/_pause.py): every rule lives there. One line on stdout says what
changed (or that nothing had to); errors are one line on stderr, and a bad
name writes nothing.
"""

from __future__ import annotations

import click

from orchestra.cli._app import (
    _fail,
    check_text_options,
    handle_errors,
    main,
    queue_options,
    resolve_config,
)


def _target(channel: str | None, definition: str | None) -> tuple[str, str]:
    """("channel" or "definition", its name): exactly one of the two options."""
    check_text_options(channel=channel, definition=definition)
    if (channel is None) == (definition is None):
        _fail("give one of --channel NAME or --definition NAME", 2)
    if channel is not None:
        return "channel", channel
    assert definition is not None
    return "definition", definition


def _act(
    ctx: click.Context,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
    *,
    pause: bool,
    channel: str | None,
    definition: str | None,
) -> None:
    kind, name = _target(channel, definition)
    with resolve_config(ctx, app_ref, dsn, schema) as config:
        config.check_schema()  # SchemaNotReadyError says to run `orchestra migrate`
        if kind == "channel":
            manager = config.channels
            changed = manager.pause(name) if pause else manager.resume(name)
        else:
            definitions = config.definitions
            changed = definitions.pause(name) if pause else definitions.resume(name)
    if pause:
        done = (
            f"paused {kind} {name!r}: workers claim none of its jobs until it is resumed "
            "(running jobs finish)"
            if changed
            else f"{kind} {name!r} was already paused"
        )
    else:
        done = (
            f"resumed {kind} {name!r}: workers claim its jobs again"
            if changed
            else f"{kind} {name!r} was not paused"
        )
    click.echo(done)


_CHANNEL_HELP = "A channel (it need not have any job yet)."
_DEFINITION_HELP = "A definition stored in the queue (a daemon that carries it stores it)."


@main.command()
@click.option("--channel", metavar="NAME", help=_CHANNEL_HELP)
@click.option("--definition", metavar="NAME", help=_DEFINITION_HELP)
@queue_options()
@click.pass_context
@handle_errors
def pause(
    ctx: click.Context,
    channel: str | None,
    definition: str | None,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """Stop workers from claiming the jobs of a channel or a definition.

    Takes effect at every worker's next claim, without a restart. Running jobs
    finish; new jobs are still deferred and wait; repeat and cron ticks of a
    paused definition are skipped. Pausing twice changes nothing.
    """
    _act(ctx, app_ref, dsn, schema, pause=True, channel=channel, definition=definition)


@main.command()
@click.option("--channel", metavar="NAME", help=_CHANNEL_HELP)
@click.option("--definition", metavar="NAME", help=_DEFINITION_HELP)
@queue_options()
@click.pass_context
@handle_errors
def resume(
    ctx: click.Context,
    channel: str | None,
    definition: str | None,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """Let workers claim the jobs of a paused channel or definition again (they are woken)."""
    _act(ctx, app_ref, dsn, schema, pause=False, channel=channel, definition=definition)
