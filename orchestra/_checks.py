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
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import TypeGuard

from croniter import croniter

from orchestra import _converter
from orchestra._names import check_printable
from orchestra.errors import ConfigurationError, PayloadError

#: Names of definitions, channels and daemons.
NAME_MAX_LENGTH = 128
#: Unique and resource keys are indexed: keep them well under the btree limit.
KEY_MAX_LENGTH = 512
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Most tags one job carries, and the longest tag.
TAGS_MAX = 20
TAG_MAX_LENGTH = 100
#: Largest ``meta`` of a job, as compact JSON: it comes back with every claim
#: and every listed job, so it stays small beside the payload.
META_MAX_BYTES = 8_192
#: Largest progress value, as compact JSON: written up to twice a second per
#: running job.
PROGRESS_MAX_BYTES = 2_048
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


def check_tags(value: object, argument: str = "tags") -> list[str]:
    """Tags of a job: distinct non-empty printable strings, at most 20 of at most 100 characters.

    A list, tuple or other ordered iterable of strings (a string would be
    taken letter by letter, a set has no order, a dict would give its keys);
    order is kept, repeats are dropped. A tag is kept as given: one with
    spaces around it is refused, as a filter typed later would not find it.
    """
    if isinstance(value, str | bytes | Mapping | AbstractSet) or not isinstance(value, Iterable):
        raise ConfigurationError(argument, f"must be a list of strings, not {type(value).__name__}")
    tags: list[str] = []
    for tag in value:
        if not isinstance(tag, str) or not tag.strip():
            raise ConfigurationError(argument, f"each tag must be a non-empty string, got {tag!r}")
        if tag != tag.strip():
            raise ConfigurationError(
                argument, f"a tag must not begin or end with spaces, got {tag!r}"
            )
        if len(tag) > TAG_MAX_LENGTH:
            raise ConfigurationError(
                argument,
                f"each tag must be at most {TAG_MAX_LENGTH} characters, got {len(tag)}",
            )
        # Tags are printed in terminals, logs and pages, and typed in filters.
        check_printable(tag, argument)
        if tag not in tags:
            tags.append(tag)
    if len(tags) > TAGS_MAX:
        raise ConfigurationError(argument, f"at most {TAGS_MAX} tags, got {len(tags)}")
    return tags


def encode_meta(value: object, argument: str = "meta") -> str:
    """A job's metadata as the JSON text stored: a dict with string keys, at most 8 KiB."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            argument, f"must be a dict (a JSON object), not {type(value).__name__}"
        )
    for key in value:
        if not isinstance(key, str):
            raise ConfigurationError(argument, f"keys must be strings, got {key!r}")
    text = _json_text(value, argument)
    size = len(text.encode("utf-8"))
    if size > META_MAX_BYTES:
        raise ConfigurationError(
            argument, f"is {size} bytes as JSON, over the limit of {META_MAX_BYTES} bytes"
        )
    return text


def encode_progress(value: object, argument: str = "progress") -> str:
    """A progress value as the JSON text stored: a fraction from 0 to 1, or a dict.

    A dict with numeric ``done`` and ``total`` (``{"done": 3, "total": 10}``)
    is shown as a fraction by the dashboard; any other dict is shown as JSON.
    At most 2 KiB as JSON.
    """
    if is_number(value):
        if not 0 <= value <= 1:  # NaN fails this too
            raise ConfigurationError(
                argument, f"a number must be a fraction from 0 to 1, got {value!r}"
            )
        return _json_text(float(value), argument)
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            argument,
            "must be a fraction from 0 to 1 or a dict such as {'done': 3, 'total': 10}, "
            f"not {type(value).__name__}",
        )
    for key in value:
        if not isinstance(key, str):
            raise ConfigurationError(argument, f"keys must be strings, got {key!r}")
    text = _json_text(value, argument)
    size = len(text.encode("utf-8"))
    if size > PROGRESS_MAX_BYTES:
        raise ConfigurationError(
            argument, f"is {size} bytes as JSON, over the limit of {PROGRESS_MAX_BYTES} bytes"
        )
    return text


def _json_text(value: object, argument: str) -> str:
    try:
        return _converter.dumps(value, what="the value", owner=argument)
    except PayloadError as exc:
        raise ConfigurationError(argument, exc.problem) from None
    except RecursionError:
        raise ConfigurationError(argument, "is nested too deeply") from None
