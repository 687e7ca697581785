"""Names people choose (daemons, definitions, channels) are printable text.

These names end up in log lines, terminals and HTML. A line break, a carriage
return, an escape sequence or a bidirectional override in one of them could
forge log lines or disguise what is shown, so they are refused where the name
is given, before anything is written.
"""

from __future__ import annotations

import unicodedata

from orchestra.errors import ConfigurationError

#: Control (Cc), format (Cf: bidi overrides, zero-width characters...), line
#: separator (Zl) and paragraph separator (Zp) characters.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def is_unprintable(character: str) -> bool:
    """True if ``character`` is of a category refused in names."""
    return unicodedata.category(character) in UNPRINTABLE_CATEGORIES


def first_unprintable(text: str) -> int | None:
    """The index of the first refused character of ``text``, or None."""
    return next((i for i, c in enumerate(text) if is_unprintable(c)), None)


def describe(character: str) -> str:
    r"""``character`` escaped and named, e.g. ``\u202e (U+202E RIGHT-TO-LEFT OVERRIDE)``."""
    escaped = character.encode("unicode_escape").decode("ascii")
    name = unicodedata.name(character, "")
    return f"{escaped} (U+{ord(character):04X}{' ' + name if name else ''})"


def check_printable(value: str, argument: str) -> str:
    """Return ``value``; ConfigurationError naming the first refused character if any."""
    index = first_unprintable(value)
    if index is not None:
        raise ConfigurationError(
            argument,
            "must not contain control, format or line separator characters: "
            f"found {describe(value[index])} at index {index}",
        )
    return value


def escape_unprintable(text: str, keep: str = "") -> str:
    r"""``text`` with each refused character not in ``keep`` written as an escape (``\n``)."""
    if first_unprintable(text) is None:
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if is_unprintable(c) and c not in keep else c
        for c in text
    )
