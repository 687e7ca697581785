"""Exceptions as storable text: one line of ``Type: message``, a traceback, both bounded.

Shared by the worker (attempt outcomes, database errors, callbacks) and its
child processes. Nothing here ever raises: a job's exception may have a
``__str__`` that raises, or a traceback that cannot be formatted, and its
attempt must still end with a record of it.
"""

from __future__ import annotations

import traceback


def describe(exc: BaseException) -> str:
    """``Type: message``, or the type alone when the message is empty.

    An exception whose ``__str__`` raises is described by its type and a note
    saying so.
    """
    name = type_name(exc)
    try:
        text = str(exc).strip()
    except BaseException:  # any __str__ of a job's exception, however broken
        text = "<str() of the exception raised>"
    return f"{name}: {text}" if text else name


def format_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc``."""
    try:
        return "".join(traceback.format_exception(exc))
    except BaseException:
        try:
            frames = "".join(traceback.format_tb(exc.__traceback__))
        except BaseException:
            frames = ""
        return f"Traceback (most recent call last):\n{frames}{type_name(exc)}: <unprintable>\n"


def storable(text: str, limit: int) -> str:
    """Text a PostgreSQL text column accepts (no NUL) and bounded in size, keeping both ends."""
    text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def type_name(exc: BaseException) -> str:
    """The name of ``exc``'s type, or ``BaseException`` if even that fails."""
    try:
        return type(exc).__name__
    except BaseException:
        return "BaseException"
