"""Connections: opening them with bounded retries, and keeping passwords out of sight."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import urllib.parse
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestra._names import escape_unprintable
from orchestra.errors import ConfigurationError, DatabaseUnavailableError

#: What stands in for a secret in everything orchestra shows.
MASK = "***"
#: The connection parameters whose values are secrets.
SECRET_PARAMETERS = ("password", "sslpassword")

# Fallbacks for texts in which no known DSN is found. libpq ends a URI's
# user:password at the first "@" or "/", so "?" and "#" belong to the password.
_URI_PASSWORD_RE = re.compile(r"(?P<prefix>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@/\s]*(?=@)", re.I)
# Stops at whitespace and at "&", so query parameters after a password in a URI survive.
_KV_PASSWORD_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.I)
_SCHEME_RE = re.compile(r"^\s*(?P<scheme>postgres(?:ql)?)://", re.I)
# A libpq parse error quotes pieces of the connection string, which may be
# pieces of the password: they are withheld.
_QUOTED_RE = re.compile(r'"[^"]*"')
# The RFC 3986 characters a URI's userinfo may hold unencoded besides letters and digits.
_USERINFO_SAFE = "-._~!$&'()*+,;=:"

#: The spellings of the passwords of every DSN seen by this process (connected
#: to, or shown redacted), by DSN: ``redact`` hides them from any text, so a
#: message formatted far from the Config it came from is still safe.
_known: dict[str, tuple[str, ...]] = {}
_known_lock = threading.Lock()

#: Connection parameters every orchestra connection uses. Autocommit: each
#: statement is its own short transaction unless a block opens one.
CONNECT_KWARGS: dict[str, Any] = {"autocommit": True}
#: Connection parameters orchestra adds to its connections where the DSN does
#: not set them. A server that vanished without a word (a network partition, a
#: killed VM, a failed-over host that no longer answers) is noticed in about
#: 30 s rather than after the kernel's TCP timeouts (minutes to hours), and an
#: unreachable host of a multi-host DSN is given up after ``connect_timeout``.
RESILIENCE_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 4,
}


def _parse(dsn: str) -> dict[str, str] | None:
    """The parameters libpq reads from ``dsn``, or None if it cannot read it."""
    if "\x00" in dsn:  # libpq would silently stop reading at the NUL
        return None
    try:
        return {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except (psycopg.Error, ValueError, UnicodeError):
        return None


def _spellings(dsn: str, secret: str) -> set[str]:
    """Every way ``secret`` may be written in ``dsn`` or in a message quoting it."""
    encoded = {
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret, safe=_USERINFO_SAFE),
        urllib.parse.quote_plus(secret, safe=""),
    }
    forms = {secret, *encoded, *(_lower_hex(form) for form in encoded)}
    # As libpq reads it in key=value form: quoted (\\ and \' escaped) or unquoted.
    forms.add(secret.replace("\\", "\\\\").replace("'", "\\'"))
    forms.add(re.sub(r"([\\' ])", r"\\\1", secret))
    # As Python and JSON quote it (repr of an exception, a JSON document).
    forms.add(repr(secret)[1:-1])
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    # As written in the URI itself, however it was percent-encoded.
    match = _SCHEME_RE.match(dsn)
    if match is not None:
        rest = dsn[match.end() :]
        authority = rest.split("/", 1)[0]
        if "@" in authority:
            userinfo = authority.split("@", 1)[0]
            if ":" in userinfo:
                forms.add(userinfo.split(":", 1)[1])
        for raw in re.findall(r"[?&](?:ssl)?password=([^&]*)", rest, re.I):
            forms.add(raw)
    return {form for form in forms if form}


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def _remember(dsn: str, params: dict[str, str] | None) -> tuple[str, ...]:
    """Record (once) how the secrets of ``dsn`` may be spelled; return the spellings."""
    forms = _known.get(dsn)
    if forms is not None:
        return forms
    found: set[str] = set()
    for key in SECRET_PARAMETERS:
        secret = (params or {}).get(key)
        if secret:
            found |= _spellings(dsn, secret)
    # Longest first: a spelling that contains another is replaced whole.
    forms = tuple(sorted(found, key=len, reverse=True))
    with _known_lock:
        _known[dsn] = forms
    return forms


def remember_dsn(dsn: str | None) -> None:
    """Make :func:`redact` hide the password of ``dsn`` from every text from now on."""
    if dsn:
        _remember(dsn, _parse(dsn))


def _mask_secrets(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def redact(text: str, *dsns: str | None) -> str:
    """Replace every password in ``text`` by ``***``.

    The passwords of ``dsns``, and of every DSN this process connected with or
    redacted, are hidden however they are spelled (raw, percent-encoded, quoted
    in key=value form). Passwords of DSNs never seen are found by their place
    in a URI or after ``password=``.
    """
    for dsn in dsns:
        remember_dsn(dsn)
    with _known_lock:
        known = list(_known.values())
    for forms in known:
        text = _mask_secrets(text, forms)
    text = _URI_PASSWORD_RE.sub(rf"\g<prefix>{MASK}", text)
    return _KV_PASSWORD_RE.sub(rf"\1{MASK}", text)


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with its password replaced by ``***``; safe for logs and errors.

    The DSN is rebuilt from the parameters libpq reads from it, so the password
    is hidden whatever characters it holds. A URI stays a URI when it can be
    written back as one; a DSN without a password comes back unchanged.
    """
    params = _parse(dsn)
    if params is None:
        return _redact_unreadable(dsn)
    forms = _remember(dsn, params)
    if not forms:
        return dsn
    masked = {key: MASK if key in SECRET_PARAMETERS else value for key, value in params.items()}
    match = _SCHEME_RE.match(dsn)
    shown = _as_uri(match.group("scheme"), masked) if match else None
    if shown is None:
        # The usual parameters first, whatever order libpq lists them in.
        order = {key: i for i, key in enumerate(("host", "hostaddr", "port", "dbname", "user"))}
        ordered = sorted(masked.items(), key=lambda item: order.get(item[0], len(order)))
        shown = make_conninfo(**dict(ordered))
    # A password that is also the user name (say) stays hidden there too.
    return _mask_secrets(shown, forms)


def _as_uri(scheme: str, params: dict[str, str]) -> str | None:
    """``params`` as a ``scheme://`` URI, or None if that would not read back the same."""
    rest = dict(params)
    user, password = rest.pop("user", ""), rest.pop("password", "")
    hosts = rest.get("host", "").split(",") if "host" in rest else []
    ports = rest.get("port", "").split(",") if "port" in rest else []
    netloc_hosts = ""
    if hosts and all(h and not h.startswith("/") for h in hosts) and len(ports) in (0, len(hosts)):
        rest.pop("host")
        rest.pop("port", None)
        shown = [f"[{h}]" if ":" in h else urllib.parse.quote(h, safe="") for h in hosts]
        netloc_hosts = ",".join(
            f"{h}:{urllib.parse.quote(p, safe='')}" if p else h
            for h, p in zip(shown, ports or [""] * len(shown), strict=True)
        )
    userinfo = urllib.parse.quote(user, safe="")
    if password:
        userinfo += f":{password}"
    uri = f"{scheme}://{userinfo + '@' if userinfo else ''}{netloc_hosts}"
    if "dbname" in rest:
        uri += "/" + urllib.parse.quote(rest.pop("dbname"), safe="")
    if rest:
        uri += "/" if "/" not in uri[len(scheme) + 3 :] else ""
        uri += "?" + "&".join(
            f"{key}={urllib.parse.quote(value, safe='')}" for key, value in rest.items()
        )
    return uri if _parse(uri) == params else None


def _redact_unreadable(dsn: str) -> str:
    """Redact a DSN libpq cannot read: mask generously, as its password cannot be located."""
    match = re.match(r"(?is)([a-z][a-z0-9+.-]*://)(.*)", dsn)
    if match is not None:
        scheme, rest = match.groups()
        at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            rest = f"{rest[:at].split(':', 1)[0]}:{MASK}{rest[at:]}"
        return scheme + re.sub(r"(?i)(password=)[^&]*", rf"\1{MASK}", rest)
    return re.sub(r"(?is)(password\s*=).*$", rf"\1{MASK}", dsn)


def check_dsn(dsn: str, *, parameter: str = "dsn") -> dict[str, str]:
    """The parameters of ``dsn``; ConfigurationError (without any piece of it) if unreadable.

    ``parameter`` names the setting the DSN came from, in the error.
    """
    params = _parse(dsn)
    if params is not None:
        return params
    if "\x00" in dsn:
        problem = "it contains a NUL character"
    else:
        try:
            conninfo_to_dict(dsn)
            problem = "libpq cannot read it"
        except (psycopg.Error, ValueError, UnicodeError) as exc:
            detail = " ".join(str(exc).split())
            problem = "libpq says: " + _QUOTED_RE.sub(_withhold, detail)
    shown = escape_unprintable(redact_dsn(dsn))  # one printable line, even with a NUL in it
    raise ConfigurationError(
        parameter, f"{shown} is not a valid connection string or URI ({problem})"
    )


def _withhold(match: re.Match[str]) -> str:
    quoted = match.group(0)
    return quoted if quoted == '"="' else f'"{MASK}"'


def _reason(exc: BaseException, dsn: str) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return redact(" ".join(lines) or type(exc).__name__, dsn)


def defaults_missing_from(dsn: str) -> dict[str, Any]:
    """The :data:`RESILIENCE_DEFAULTS` that neither ``dsn`` nor libpq's environment sets.

    A DSN naming a ``service`` (or ``PGSERVICE``) gets none: its service file may set them.
    """
    params = _parse(dsn) or {}
    if "service" in params or os.environ.get("PGSERVICE"):
        return {}
    given = set(params)
    if os.environ.get("PGCONNECT_TIMEOUT"):
        given.add("connect_timeout")
    return {key: value for key, value in RESILIENCE_DEFAULTS.items() if key not in given}


def _connect_timeout(dsn: str, timeout_s: float) -> dict[str, Any]:
    """:func:`connect`'s ``connect_timeout``, unless the DSN or ``PGCONNECT_TIMEOUT`` sets one.

    (A service file's own is not seen here: the retries need a bound.)
    """
    if "connect_timeout" in (_parse(dsn) or {}) or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": max(1, round(timeout_s))}


def retry_delays(attempts: int, first_s: float = 0.25, cap_s: float = 4.0) -> list[float]:
    """The waits between ``attempts`` connection attempts: 0.25 s, 0.5 s, 1 s ... capped."""
    return [min(cap_s, first_s * 2**i) for i in range(max(0, attempts - 1))]


def connect(
    dsn: str, *, attempts: int = 5, timeout_s: float = 5.0, **kwargs: Any
) -> psycopg.Connection[Any]:
    """Open a connection, retrying with backoff; raise DatabaseUnavailableError at the end."""
    check_dsn(dsn)
    remember_dsn(dsn)
    delays = retry_delays(attempts)
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return psycopg.connect(
                dsn, **CONNECT_KWARGS | kwargs | _connect_timeout(dsn, timeout_s)
            )
        except psycopg.OperationalError as exc:
            last = exc
            if attempt < len(delays):
                time.sleep(delays[attempt])
    raise DatabaseUnavailableError(
        redact_dsn(dsn), attempts, _reason(last or Exception(), dsn)
    ) from None


async def connect_async(
    dsn: str, *, attempts: int = 5, timeout_s: float = 5.0, **kwargs: Any
) -> psycopg.AsyncConnection[Any]:
    """Async twin of :func:`connect`."""
    check_dsn(dsn)
    remember_dsn(dsn)
    delays = retry_delays(attempts)
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return await psycopg.AsyncConnection.connect(
                dsn, **CONNECT_KWARGS | kwargs | _connect_timeout(dsn, timeout_s)
            )
        except psycopg.OperationalError as exc:
            last = exc
            if attempt < len(delays):
                await asyncio.sleep(delays[attempt])
    raise DatabaseUnavailableError(
        redact_dsn(dsn), attempts, _reason(last or Exception(), dsn)
    ) from None
