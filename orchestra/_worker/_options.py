"""A worker's settings, checked once: every bad value raises ConfigurationError naming it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import attrs

from orchestra._checks import CHANNEL_RE, check_int, check_name, milliseconds
from orchestra.errors import ConfigurationError

PROCESS_INTERVAL_MS_DEFAULT = 1_000
SHUTDOWN_GRACE_MS_DEFAULT = 30_000
UNKNOWN_DEFINITION_DELAY_MS_DEFAULT = 5_000
#: The channel of a worker given neither ``channel`` nor ``channels``.
DEFAULT_CHANNEL = "_default"


def check_channels(channel: object, channels: object) -> tuple[str, ...]:
    """The channels a worker serves, from ``channel=`` or ``channels=`` (not both).

    Neither: ``_default``. ``channels`` is a non-empty list of distinct valid
    names, kept in the order given.
    """
    if channel is not None and channels is not None:
        raise ConfigurationError("channels", "give channel (one) or channels (several), not both")
    if channels is None:
        name = DEFAULT_CHANNEL if channel is None else channel
        return (check_name(name, "channel", pattern=CHANNEL_RE),)
    if isinstance(channels, str | bytes) or not isinstance(channels, Iterable):
        raise ConfigurationError(
            "channels", f"must be a list of channel names, not {type(channels).__name__}"
        )
    names = list(channels)
    if not names:
        raise ConfigurationError("channels", "must name at least one channel")
    seen: set[str] = set()
    for name in names:
        check_name(name, "channels", pattern=CHANNEL_RE)
        if name in seen:
            raise ConfigurationError("channels", f"{name!r} is given twice")
        seen.add(name)
    return tuple(names)


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """What :class:`~._worker.Worker` was asked to do (see its arguments)."""

    #: The channels served, in the order given (at least one).
    channels: tuple[str, ...]
    concurrency: int
    processes: int | None
    process_interval_ms: int
    shutdown_grace_ms: int
    #: None: derived from the lock intervals of the channels' definitions.
    heartbeat_interval_ms: int | None
    listen_notify: bool
    unknown_definition_delay_ms: int

    @classmethod
    def check(
        cls,
        *,
        channel: object = None,
        channels: object = None,
        concurrency: int | None,
        processes: int | None,
        process_interval_ms: int | dt.timedelta,
        shutdown_grace_ms: int | dt.timedelta,
        heartbeat_interval_ms: int | dt.timedelta | None,
        listen_notify: bool,
        unknown_definition_delay_ms: int | dt.timedelta,
    ) -> WorkerOptions:
        """The options, or ConfigurationError naming the first bad one."""
        served = check_channels(channel, channels)
        if processes is not None:
            check_int(processes, "processes", 1, 256)
        if concurrency is None:
            concurrency = processes or 1
        check_int(concurrency, "concurrency", 1, 10_000)
        if processes is not None and concurrency != processes:
            # A claimed job waiting for a busy child would hold its lease and
            # delay other workers for nothing.
            raise ConfigurationError(
                "concurrency",
                f"with processes={processes} each child runs one job: leave concurrency "
                f"unset or equal to processes, got {concurrency}",
            )
        process_interval = milliseconds(process_interval_ms, "process_interval_ms") or 0
        if process_interval < 10:
            raise ConfigurationError("process_interval_ms", "must be at least 10 ms")
        shutdown_grace = milliseconds(shutdown_grace_ms, "shutdown_grace_ms") or 0
        heartbeat_interval = milliseconds(
            heartbeat_interval_ms, "heartbeat_interval_ms", allow_none=True
        )
        if heartbeat_interval is not None and heartbeat_interval < 50:
            raise ConfigurationError("heartbeat_interval_ms", "must be at least 50 ms")
        return cls(
            channels=served,
            concurrency=concurrency,
            processes=processes,
            process_interval_ms=process_interval,
            shutdown_grace_ms=shutdown_grace,
            heartbeat_interval_ms=heartbeat_interval,
            listen_notify=bool(listen_notify),
            unknown_definition_delay_ms=(
                milliseconds(unknown_definition_delay_ms, "unknown_definition_delay_ms") or 0
            ),
        )
