"""Pausing and resuming channels and definitions: ``config.channels`` and ``config.definitions``.

A paused channel or definition keeps its jobs and takes new ones, but no
worker claims them: every claim statement reads the pauses (the
``channel_pause`` table, ``job_definition.paused``), so a pause takes effect
at the next claim of every worker, without a restart, and a resume wakes the
channel's workers. Jobs already running finish as usual. Repeat and cron ticks
of a paused definition are skipped (no job), and the orchestrator counts them.
docs/decisions/0031 says why it works this way.

Pausing and resuming are idempotent: each call returns whether it changed
anything. A channel is free-form, so one without any job may be paused; a
definition must be stored (a daemon that carries it stores it when it
starts), or :class:`~orchestra.errors.UnknownDefinitionError` is raised.

Each operation is written once as a generator of statements (:mod:`orchestra._ops`)
and run by the sync classes (``config.channels``, ``config.definitions``)
and their async twins (``config.channels_async``, ``config.definitions_async``).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from orchestra import _ops
from orchestra._checks import CHANNEL_RE, check_name
from orchestra._database import D, Database
from orchestra._ops import Op, Row, Statement
from orchestra._records import PausedChannel
from orchestra.errors import UnknownDefinitionError

__all__ = ["AsyncChannels", "AsyncDefinitions", "Channels", "Definitions"]

T = TypeVar("T")


# -- operations, written once for both twins -----------------------------------


def _pause_channel(channel: object) -> Op[bool]:
    name = check_name(channel, "channel", pattern=CHANNEL_RE)
    rows: list[Row] = yield Statement("manage_channel_pause", {"channel": name})
    return bool(rows)


def _resume_channel(config: Database, channel: object) -> Op[bool]:
    name = check_name(channel, "channel", pattern=CHANNEL_RE)
    rows: list[Row] = yield Statement(
        "manage_channel_resume", {"channel": name, "notify_channel": config.notify_channel}
    )
    return bool(rows)


def _paused_channels() -> Op[list[PausedChannel]]:
    rows: list[Row] = yield Statement("manage_channel_paused", {})
    return [PausedChannel(row["channel"], row["paused_at"], row["paused_by"]) for row in rows]


def _set_definition_paused(config: Database, definition: object, paused: bool) -> Op[bool]:
    name = check_name(definition, "definition")
    rows: list[Row] = yield Statement(
        "manage_definition_pause",
        {"name": name, "paused": paused, "notify_channel": config.notify_channel},
    )
    if not rows:
        raise UnknownDefinitionError(name)
    return bool(rows[0]["changed"])


def _paused_definitions() -> Op[list[str]]:
    rows: list[Row] = yield Statement("manage_definition_paused", {})
    return [row["name"] for row in rows]


def _run(config: Database, op: Op[T]) -> T:
    started, step = _ops.start(op)  # the argument checks run here, before connecting
    if not started:
        return step  # type: ignore[no-any-return]
    with config.connection() as conn:
        return _ops.run(conn, config.queries, op, step)


async def _run_async(config: Database, op: Op[T]) -> T:
    started, step = _ops.start(op)
    if not started:
        return step  # type: ignore[no-any-return]
    async with config.connection_async() as conn:
        return await _ops.run_async(conn, config.queries, op, step)


# -- channels ----------------------------------------------------------------------


class Channels:
    """Pause and resume channels: ``config.channels``.

    A bad channel name raises :class:`~orchestra.errors.ConfigurationError`
    and writes nothing.
    """

    def __init__(self, config: Database) -> None:
        self._config = config

    def __repr__(self) -> str:
        return f"Channels(schema={self._config.schema!r})"

    def pause(self, channel: str) -> bool:
        """Stop every worker from claiming the channel's jobs; True if it was not paused.

        Running jobs finish; new jobs are still deferred, and wait.
        """
        return _run(self._config, _pause_channel(channel))

    def resume(self, channel: str) -> bool:
        """Let workers claim the channel's jobs again (they are woken); True if it was paused."""
        return _run(self._config, _resume_channel(self._config, channel))

    def paused(self) -> builtins.list[PausedChannel]:
        """The paused channels, by name."""
        return _run(self._config, _paused_channels())


class AsyncChannels:
    """Async twin of :class:`Channels`: ``config.channels_async``."""

    def __init__(self, config: Database) -> None:
        self._config = config

    def __repr__(self) -> str:
        return f"AsyncChannels(schema={self._config.schema!r})"

    async def pause(self, channel: str) -> bool:
        """Async twin of :meth:`Channels.pause`."""
        return await _run_async(self._config, _pause_channel(channel))

    async def resume(self, channel: str) -> bool:
        """Async twin of :meth:`Channels.resume`."""
        return await _run_async(self._config, _resume_channel(self._config, channel))

    async def paused(self) -> builtins.list[PausedChannel]:
        """Async twin of :meth:`Channels.paused`."""
        return await _run_async(self._config, _paused_channels())


# -- definitions ---------------------------------------------------------------------


class Definitions(Mapping[str, D], Generic[D]):
    """The definitions registered in this process, by name, and pausing: ``config.definitions``.

    A read-only mapping, a snapshot taken when ``config.definitions`` is read.
    :meth:`pause` and :meth:`resume` act on the definitions stored in the
    database, registered here or not.
    """

    def __init__(self, config: Database, registered: Mapping[str, D]) -> None:
        self._config = config
        # Database.definitions hands over a copy of its own: kept, not copied again.
        self._registered = registered

    def __contains__(self, name: object) -> bool:
        return name in self._registered

    def __getitem__(self, name: str) -> D:
        return self._registered[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._registered)

    def __len__(self) -> int:
        return len(self._registered)

    def __repr__(self) -> str:
        return repr(self._registered)

    def pause(self, name: str) -> bool:
        """Stop every worker from claiming the definition's jobs; True if it was not paused.

        Running jobs finish; new jobs are still deferred, and wait; repeat and
        cron ticks are skipped. Raises UnknownDefinitionError when no
        definition of that name is stored.
        """
        return _run(self._config, _set_definition_paused(self._config, name, True))

    def resume(self, name: str) -> bool:
        """Let workers claim the definition's jobs again; True if it was paused."""
        return _run(self._config, _set_definition_paused(self._config, name, False))

    def paused(self) -> builtins.list[str]:
        """The names of the stored definitions that are paused."""
        return _run(self._config, _paused_definitions())


class AsyncDefinitions:
    """Async twin of the pausing of :class:`Definitions`: ``config.definitions_async``."""

    def __init__(self, config: Database[Any]) -> None:
        self._config = config

    def __repr__(self) -> str:
        return f"AsyncDefinitions(schema={self._config.schema!r})"

    async def pause(self, name: str) -> bool:
        """Async twin of :meth:`Definitions.pause`."""
        return await _run_async(self._config, _set_definition_paused(self._config, name, True))

    async def resume(self, name: str) -> bool:
        """Async twin of :meth:`Definitions.resume`."""
        return await _run_async(self._config, _set_definition_paused(self._config, name, False))

    async def paused(self) -> builtins.list[str]:
        """Async twin of :meth:`Definitions.paused`."""
        return await _run_async(self._config, _paused_definitions())
