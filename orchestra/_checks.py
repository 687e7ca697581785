"""Argument checks shared by every public entry point, and interval parsing.

Each check returns the value it accepted or raises :class:`ConfigurationError`
naming the argument, before anything is written. ``True`` and ``False`` are
ints to Python but never a count, a size or an id here: :func:`is_int` and
:func:`is_number` say so once for the whole package.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import TypeGuard

from croniter import croniter

from orchestra._names import check_printable
from orchestra.errors import ConfigurationError

#: Names of definitions, channels and daemons.
NAME_MAX_LENGTH = 128
#: Unique and resource keys are indexed: keep them well under the btree limit.
KEY_MAX_LENGTH = 512
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Longest interval accepted anywhere: 10 years, far inside PostgreSQL's
#: bigint and interval ranges, so an absurd value fails here, not in SQL.
MAX_INTERVAL_MS = 10 * 365 * 24 * 3600 * 1000


def is_int(value: object) -> TypeGuard[int]:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """True for an ``int`` or a ``float`` that is not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(value: object, argument: str, low: int, high: int | None = None) -> int:
    """An int from ``low`` to ``high`` (inclusive; None: no upper bound)."""
    if not is_int(value):
        raise ConfigurationError(argument, f"must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigurationError(argument, f"must be {bound}, got {value}")
    return value


def check_flag(value: object, argument: str) -> bool:
    """``True`` or ``False``, nothing that merely converts to one."""
    if not isinstance(value, bool):
        raise ConfigurationError(argument, f"must be True or False, not {value!r}")
    return value


def check_name(value: object, argument: str, *, pattern: re.Pattern[str] | None = None) -> str:
    """A non-empty printable name of at most 128 characters, matching ``pattern`` if given."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(argument, "must be a non-empty string")
    if len(value) > NAME_MAX_LENGTH:
        raise ConfigurationError(
            argument, f"must be at most {NAME_MAX_LENGTH} characters, got {len(value)}"
        )
    # Names and channels are printed in logs, terminals and pages: no line breaks,
    # escape sequences or bidi overrides that could forge or disguise a line.
    check_printable(value, argument)
    if pattern is not None and not pattern.fullmatch(value):
        raise ConfigurationError(argument, f"{value!r} may only use letters, digits and _ . : -")
    return value


def check_key(value: object, argument: str) -> str:
    """A unique or resource key: a non-empty string of at most 512 characters, without NUL."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(argument, f"must be a non-empty string, not {value!r}")
    if len(value) > KEY_MAX_LENGTH:
        raise ConfigurationError(
            argument, f"must be at most {KEY_MAX_LENGTH} characters, got {len(value)}"
        )
    if "\x00" in value:
        raise ConfigurationError(argument, "must not contain NUL characters")
    return value


def milliseconds(value: object, argument: str, *, allow_none: bool = False) -> int | None:
    """Accept an ``int`` of milliseconds or a ``timedelta``; reject anything negative."""
    if value is None:
        if allow_none:
            return None
        raise ConfigurationError(argument, "must be given")
    if isinstance(value, dt.timedelta):
        value = round(value.total_seconds() * 1000)
    if not is_int(value):
        raise ConfigurationError(
            argument, f"must be an int of milliseconds or a timedelta, not {type(value).__name__}"
        )
    if value < 0:
        raise ConfigurationError(argument, f"must not be negative, got {value}")
    if value > MAX_INTERVAL_MS:
        raise ConfigurationError(
            argument, f"must be at most {MAX_INTERVAL_MS} ms (10 years), got {value}"
        )
    return value


#: A duration as people type it: a number of seconds, or a number and a unit.
_DURATION_RE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|h|d)?", re.ASCII)
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_FORMS = "10s, 5m, 1.5h, 2d, 250ms or plain seconds"


def duration_ms(text: str, argument: str) -> int:
    """Milliseconds from a duration such as ``10s``, ``5m``, ``250ms`` or ``30`` (seconds).

    For the command line, where intervals are typed by people; the result is
    bounded as every interval is (:func:`milliseconds`).
    """
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ConfigurationError(argument, f"must not be negative, got {text!r}")
    match = _DURATION_RE.fullmatch(stripped)
    if match is None:
        raise ConfigurationError(
            argument, f"{text!r} is not a duration (give e.g. {DURATION_FORMS})"
        )
    value = float(match["number"]) * _UNIT_MS[match["unit"] or "s"]
    # Checked as a float first: a number of hundreds of digits is inf, which round() refuses.
    if value > MAX_INTERVAL_MS:
        raise ConfigurationError(argument, f"must be at most 10 years, got {text!r}")
    return milliseconds(round(value), argument) or 0


def check_cron(expression: object, timezone: object) -> tuple[str | None, str | None]:
    """A cron expression and the IANA time zone it is read in; both None for no cron."""
    if expression is None:
        if timezone is not None:
            raise ConfigurationError("cron_timezone", "is only meaningful with cron")
        return None, None
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ConfigurationError("cron", f"{expression!r} is not a valid cron expression")
    if timezone is not None:
        if not isinstance(timezone, str):
            raise ConfigurationError(
                "cron_timezone", "must be an IANA time zone name such as 'Europe/Paris'"
            )
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError("cron_timezone", f"unknown time zone {timezone!r}") from None
    return expression, timezone
