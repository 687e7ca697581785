"""orchestra's own cattrs converter, and JSON encoding of payloads and results.

Payloads may be attrs classes, dataclasses, TypedDicts or plain JSON values.
They are unstructured with this converter (never ``cattrs.global_converter``,
which belongs to the application), then dumped to compact JSON. Anything that
does not end as JSON is refused with :class:`PayloadError` before a byte is
written. Stored JSON is structured back into the definition's type in the worker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import re
import uuid
from typing import Any

import attrs
import cattrs

from orchestra.errors import PayloadError

converter = cattrs.Converter()
converter.register_unstructure_hook(dt.datetime, lambda value: value.isoformat())
converter.register_structure_hook(dt.datetime, lambda value, _: dt.datetime.fromisoformat(value))
converter.register_unstructure_hook(dt.date, lambda value: value.isoformat())
converter.register_structure_hook(dt.date, lambda value, _: dt.date.fromisoformat(value))
converter.register_unstructure_hook(uuid.UUID, str)
converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(value))
converter.register_unstructure_hook(decimal.Decimal, str)
converter.register_structure_hook(decimal.Decimal, lambda value, _: decimal.Decimal(value))

# A NUL character in the value is dumped as the escape \u0000 (not preceded by
# another backslash); a literal backslash followed by "u0000" is dumped as
# \\u0000 and is fine for jsonb.
_NUL_ESCAPE_RE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
).encode


def _is_class_type(payload_type: Any) -> bool:
    return isinstance(payload_type, type) and (
        attrs.has(payload_type) or dataclasses.is_dataclass(payload_type)
    )


def dumps(value: Any, *, what: str, owner: str, unstructure_as: Any = None) -> str:
    """Unstructure ``value`` and dump it to compact JSON, or raise PayloadError."""
    try:
        plain = converter.unstructure(value, unstructure_as=unstructure_as)
    except Exception as exc:
        raise PayloadError(owner, f"{what} cannot be converted: {exc}") from exc
    try:
        text = _dumps(plain)
    except (TypeError, ValueError) as exc:
        raise PayloadError(owner, f"{what} is not JSON-serializable: {exc}") from None
    if "\\u0000" in text and _NUL_ESCAPE_RE.search(text):
        raise PayloadError(owner, f"{what} contains a NUL character, which jsonb cannot store")
    return text


def encode_payload(payload: Any, *, payload_type: Any, owner: str, max_bytes: int) -> str:
    """The JSON text stored for ``payload``; checks its type and its size."""
    if _is_class_type(payload_type):
        if not isinstance(payload, payload_type):
            raise PayloadError(
                owner,
                f"expected an instance of {payload_type.__name__}, got {type(payload).__name__}",
            )
        text = dumps(payload, what="payload", owner=owner, unstructure_as=payload_type)
    else:
        text = dumps(payload, what="payload", owner=owner)
        if payload_type is not None:
            # TypedDicts and generic types are not checked by isinstance: check
            # that what will be stored structures back into the declared type.
            try:
                converter.structure(json.loads(text), payload_type)
            except Exception as exc:
                raise PayloadError(
                    owner, f"payload does not match {payload_type!r}: {_describe(exc)}"
                ) from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise PayloadError(owner, f"payload is {size} bytes, over the limit of {max_bytes} bytes")
    return text


def decode_payload(value: Any, payload_type: Any) -> Any:
    """Structure a stored payload into ``payload_type`` (None: plain JSON)."""
    if payload_type is None:
        return value
    return converter.structure(value, payload_type)


class UnreadablePayloadError(ValueError):
    """The stored JSON text of a payload cannot be decoded in Python."""


def load_stored(text: str) -> Any:
    """The JSON value of a payload as the database returned it (text).

    PostgreSQL accepts JSON nested far deeper than Python's decoder, which
    gives up with RecursionError at about a thousand levels: such a payload is
    refused here, in the attempt of its own job, rather than when the claimed
    rows are read (which would fail every job claimed with it).
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise UnreadablePayloadError(
            "the stored JSON is nested too deeply for Python's JSON decoder"
        ) from None
    except ValueError as exc:
        raise UnreadablePayloadError(f"the stored JSON cannot be decoded: {exc}") from None


def load_readable(text: str | None) -> Any:
    """A stored JSON value for reading (management API, dashboard, callbacks).

    Never raises: JSON that Python cannot decode becomes a string saying so,
    so that one such value does not fail a whole list of jobs.
    """
    if text is None:
        return None
    try:
        return load_stored(text)
    except UnreadablePayloadError as exc:
        return f"<unreadable JSON of {len(text)} characters: {exc}>"


def decode_stored_payload(text: str, payload_type: Any) -> Any:
    """Decode and structure a payload as the worker's claim returned it (JSON text)."""
    return decode_payload(load_stored(text), payload_type)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc)) or str(exc)
    return str(exc) or type(exc).__name__


def describe_structure_error(exc: BaseException) -> str:
    """A one-line, human account of why a payload did not structure."""
    return _describe(exc)
