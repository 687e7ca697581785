"""Who may see the dashboard, and proof that a form was sent from it.

* :class:`DashboardAuth`: optional HTTP basic auth and/or a bearer token, read
  from ``ORCHESTRA_DASHBOARD_USER`` / ``ORCHESTRA_DASHBOARD_PASSWORD`` and
  ``ORCHESTRA_DASHBOARD_TOKEN``. Credentials are compared with
  :func:`hmac.compare_digest` and never appear in a repr, a log line or a
  response.
* :class:`Guard`: the ASGI middleware that asks for them (401 otherwise) and
  adds security headers (a strict Content-Security-Policy: no inline script or
  style is needed by any page) to every response.
* CSRF: forms carry ``HMAC(app secret, session cookie)``; the cookie is random,
  HttpOnly and SameSite=Strict, so another site can neither read the token
  nor make the browser send the cookie with a forged form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping

import attrs
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestra.errors import ConfigurationError

USER_ENV = "ORCHESTRA_DASHBOARD_USER"
PASSWORD_ENV = "ORCHESTRA_DASHBOARD_PASSWORD"  # noqa: S105 (the variable's name, not a password)
TOKEN_ENV = "ORCHESTRA_DASHBOARD_TOKEN"  # noqa: S105

SESSION_COOKIE = "orchestra_session"

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
    ("cache-control", "no-store"),
)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@attrs.frozen(repr=False)
class DashboardAuth:
    """The credentials the dashboard asks for; nothing set means no authentication.

    Args:
        user: with ``password``, the HTTP basic auth credentials.
        password: the basic auth password.
        token: a bearer token (``Authorization: Bearer <token>``), for scripts.

    When both basic auth and a token are set, either is accepted.
    """

    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ConfigurationError(
                "auth", f"basic auth needs both {USER_ENV} and {PASSWORD_ENV}, or neither"
            )
        for name, value in (("user", self.user), ("password", self.password)):
            if value is not None and not value:
                raise ConfigurationError("auth", f"the basic auth {name} must not be empty")
        if self.user is not None and ":" in self.user:
            raise ConfigurationError("auth", "the basic auth user must not contain ':'")
        if self.token is not None and not self.token:
            raise ConfigurationError("auth", "the bearer token must not be empty")

    def __repr__(self) -> str:
        return f"DashboardAuth(basic={self.basic}, token={self.token is not None})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DashboardAuth:
        """The credentials named by the environment (unset or empty variables: none)."""
        env = os.environ if environ is None else environ
        return cls(
            user=env.get(USER_ENV) or None,
            password=env.get(PASSWORD_ENV) or None,
            token=env.get(TOKEN_ENV) or None,
        )

    @property
    def basic(self) -> bool:
        """True when basic auth credentials are set."""
        return self.user is not None

    @property
    def enabled(self) -> bool:
        """True when some credential is required."""
        return self.basic or self.token is not None

    def accepts(self, authorization: str | None) -> bool:
        """True if the ``Authorization`` header value carries valid credentials."""
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and self.token is not None:
            return _same(credentials, self.token)
        if scheme.lower() == "basic" and self.user is not None and self.password is not None:
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, colon, password = decoded.partition(":")
            # Both compared, always: the time taken says nothing about which one is wrong.
            user_ok = _same(user, self.user)
            password_ok = _same(password, self.password)
            return bool(colon) and user_ok and password_ok
        return False

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` header of a 401."""
        if self.basic:
            return 'Basic realm="orchestra dashboard", charset="UTF-8"'
        return 'Bearer realm="orchestra dashboard"'


def is_api_path(scope: Scope) -> bool:
    """True for a request under ``/api`` (JSON answers), whatever the mount point."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path == "/api" or path.startswith("/api/")


class Guard:
    """ASGI middleware: authentication (401 without valid credentials) and security headers."""

    def __init__(self, app: ASGIApp, auth: DashboardAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers[name] = value
            await send(message)

        if not self.auth.accepts(Headers(scope=scope).get("authorization")):
            response: Response
            if is_api_path(scope):
                response = JSONResponse({"error": "authentication required", "status": 401}, 401)
            else:
                response = PlainTextResponse("authentication required\n", 401)
            response.headers["www-authenticate"] = self.auth.challenge()
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


# -- CSRF -------------------------------------------------------------------------------


def new_session() -> str:
    """A fresh random session id for the CSRF cookie."""
    return secrets.token_urlsafe(32)


def csrf_token(secret: bytes, session: str) -> str:
    """The form token of ``session``: an HMAC only this app instance can compute."""
    return hmac.new(secret, b"csrf:" + session.encode("utf-8"), hashlib.sha256).hexdigest()


def csrf_valid(secret: bytes, session: str | None, token: str | None) -> bool:
    """True if ``token`` is the form token of ``session``."""
    if not session or not token:
        return False
    return _same(token, csrf_token(secret, session))
