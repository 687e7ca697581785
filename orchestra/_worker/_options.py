"""A worker's settings, checked once: every bad value raises ConfigurationError naming it."""

from __future__ import annotations

import datetime as dt

import attrs

from orchestra._checks import CHANNEL_RE, check_int, check_name, milliseconds
from orchestra.errors import ConfigurationError

PROCESS_INTERVAL_MS_DEFAULT = 1_000
SHUTDOWN_GRACE_MS_DEFAULT = 30_000
UNKNOWN_DEFINITION_DELAY_MS_DEFAULT = 5_000


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """What :class:`~._worker.Worker` was asked to do (see its arguments)."""

    channel: str
    concurrency: int
    processes: int | None
    process_interval_ms: int
    shutdown_grace_ms: int
    #: None: derived from the channel's lock intervals.
    heartbeat_interval_ms: int | None
    listen_notify: bool
    unknown_definition_delay_ms: int

    @classmethod
    def check(
        cls,
        *,
        channel: object,
        concurrency: int | None,
        processes: int | None,
        process_interval_ms: int | dt.timedelta,
        shutdown_grace_ms: int | dt.timedelta,
        heartbeat_interval_ms: int | dt.timedelta | None,
        listen_notify: bool,
        unknown_definition_delay_ms: int | dt.timedelta,
    ) -> WorkerOptions:
        """The options, or ConfigurationError naming the first bad one."""
        channel_name = check_name(channel, "channel", pattern=CHANNEL_RE)
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
            channel=channel_name,
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
