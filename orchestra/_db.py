"""Connections: opening them with bounded retries, and keeping passwords out of sight."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestra.errors import DatabaseUnavailableError

_URI_PASSWORD_RE = re.compile(r"(?P<prefix>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]*(?=@)", re.I)
# Stops at whitespace and at "&", so query parameters after a password in a URI survive.
_KV_PASSWORD_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.I)

#: Connection parameters every orchestra connection uses. Autocommit: each
#: statement is its own short transaction unless a block opens one.
CONNECT_KWARGS: dict[str, Any] = {"autocommit": True}


def redact(text: str) -> str:
    """Replace every password found in ``text`` (URI or key=value form) by ``***``."""
    text = _URI_PASSWORD_RE.sub(r"\g<prefix>***", text)
    return _KV_PASSWORD_RE.sub(r"\1***", text)


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with its password replaced by ``***``; safe for logs and errors."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return redact(dsn)
    if "password" in params:
        if "://" in dsn:
            return redact(dsn)
        params["password"] = "***"  # noqa: S105 (the redaction mask, not a secret)
        return make_conninfo(**{k: str(v) for k, v in params.items()})
    return dsn


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return redact(" ".join(lines) or type(exc).__name__)


def retry_delays(attempts: int, first_s: float = 0.25, cap_s: float = 4.0) -> list[float]:
    """The waits between ``attempts`` connection attempts: 0.25 s, 0.5 s, 1 s ... capped."""
    return [min(cap_s, first_s * 2**i) for i in range(max(0, attempts - 1))]


def connect(
    dsn: str, *, attempts: int = 5, timeout_s: float = 5.0, **kwargs: Any
) -> psycopg.Connection[Any]:
    """Open a connection, retrying with backoff; raise DatabaseUnavailableError at the end."""
    delays = retry_delays(attempts)
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return psycopg.connect(
                dsn, connect_timeout=max(1, round(timeout_s)), **CONNECT_KWARGS | kwargs
            )
        except psycopg.OperationalError as exc:
            last = exc
            if attempt < len(delays):
                time.sleep(delays[attempt])
    raise DatabaseUnavailableError(
        redact_dsn(dsn), attempts, _reason(last or Exception())
    ) from None


async def connect_async(
    dsn: str, *, attempts: int = 5, timeout_s: float = 5.0, **kwargs: Any
) -> psycopg.AsyncConnection[Any]:
    """Async twin of :func:`connect`."""
    delays = retry_delays(attempts)
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return await psycopg.AsyncConnection.connect(
                dsn, connect_timeout=max(1, round(timeout_s)), **CONNECT_KWARGS | kwargs
            )
        except psycopg.OperationalError as exc:
            last = exc
            if attempt < len(delays):
                await asyncio.sleep(delays[attempt])
    raise DatabaseUnavailableError(
        redact_dsn(dsn), attempts, _reason(last or Exception())
    ) from None
