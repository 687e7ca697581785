"""Hostile requests to the dashboard: never a 500, never a write, always escaped.

The dashboard (``orchestra.dashboard``) is served in-process through
Starlette's TestClient, with server exceptions turned into responses, on a
schema holding jobs with hostile data of their own (markup, control
characters and deep nesting in payloads and errors). Every query and path
parameter gets NUL and control bytes, overlong values, invalid UTF-8
percent-escapes, SQL injection and markup; the routes get wrong methods; the
actions get forged, missing and cross-site CSRF tokens, wrong content types,
malformed, nested and huge bodies; authentication gets malformed
credentials. Then the same server is run as ``orchestra dashboard`` and fed
raw bytes that no HTTP client library would send.

Afterwards:

* no response is a 5xx, and each is the 4xx that fits (or a 200 for a
  filter that matches nothing);
* no HTML response carries hostile markup unescaped;
* the queue's tables are exactly as before: nothing was written;
* the server still answers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, LiteralString

import attrs
import httpx2
import psycopg
import pytest
from psycopg import sql
from starlette.testclient import TestClient

from orchestra import Config, JobDefinition
from orchestra.dashboard import DashboardAuth, create_app
from orchestra.testing import run_until_empty, wait_until
from tests.e2e._support import REPO, orchestra_argv
from tests.faults import _hostile
from tests.faults._cluster import free_port
from tests.faults._report import CaseResult, Report

#: Markup that must never reach an HTML page unescaped.
XSS = (
    '<script>alert("xss")</script>',
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    "</title><script>alert(1)</script>",
    "javascript:alert(1)//'\"",
)
SQL_INJECTION = (
    "' OR '1'='1",
    "x'; DROP TABLE job; --",
    "1 UNION SELECT NULL, NULL --",
    "\\'; DELETE FROM job; --",
    "')) OR 1=1 --",
)
CONTROL = (
    "\x00",
    "a\x00b",
    "\x01\x02\x07\x1b[31m\x7f",
    "\r\nSet-Cookie: evil=1",
    "\t\x0b\x0c\x1c\x85",
)
OVERLONG = ("x" * 20_000, "9" * 5_000, "-" + "9" * 40)
ODD = (
    "",
    " ",
    "\ufffd",
    "\u202eevil",
    "🎉" * 100,
    "\uff11\uff12\uff13",
    "NaN",
    "-0",
    "1e9",
    "0x10",
)
#: Invalid UTF-8 (and other odd) percent-escapes, written into URLs as they are.
BAD_ESCAPES = (
    "%FF",
    "%FF%FE",
    "%C3%28",
    "%ED%A0%80",
    "%F4%90%80%80",
    "%C0%AF",
    "%E2%82",
    "%%",
    "%0",
)
HOSTILE_VALUES = (*CONTROL, *OVERLONG, *ODD, *SQL_INJECTION, *XSS)
#: Values a filter may take as its default ("") or as a number (int() reads "-0"
#: and fullwidth digits): a 200 is fine for these.
DEFAULTED = ("", "-0", "\uff11\uff12\uff13")

#: Query parameters of /jobs and /api/jobs, and what a hostile value of each gets.
PARAMETERS = {
    "status": {400},
    "limit": {400},
    "offset": {400},
    "order": {400},
    "definition": {200, 400},
    "channel": {200, 400},
    "unknown": {200},
}
GET_ROUTES = (
    "/",
    "/jobs",
    "/jobs/{id}",
    "/definitions",
    "/api/overview",
    "/api/jobs",
    "/api/jobs/{id}",
    "/api/definitions",
    "/api/openapi.json",
)
PATH_JUNK = (
    "%00",
    "a%00b",
    *BAD_ESCAPES,
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "%27%20OR%201%3D1%20--",
    "%0d%0aSet-Cookie:%20evil=1",
    "..%2F..%2F..%2Fpyproject.toml",
    "%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
    "x" * 20_000,
    "-1",
    "0",
    "9223372036854775808",
    "9" * 40,
    "9" * 5_000,
    "1.5",
    "1e3",
    "%EF%BC%91",  # a fullwidth digit one
)
PATH_PREFIXES = ("/", "/jobs/", "/api/jobs/", "/api/", "/static/", "/definitions/")
TABLES: tuple[LiteralString, ...] = (
    "job",
    "job_history",
    "job_attempt",
    "job_dependency",
    "job_definition",
    "worker",
    "leader",
)
DEEP_LEVELS = 5_000
#: A request body well over the dashboard's 16 KiB limit.
HUGE_BODY_BYTES = 1024 * 1024
FOREIGN_ORIGIN = "https://evil.example"
#: A well-formed request, to tell that the real server answers.
OVERVIEW = b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def explode(payload: dict[str, Any]) -> None:
    """A job whose error carries markup and control characters."""
    raise ValueError(f"{XSS[0]} failed with \x1b[31m{XSS[1]}\x07 for {payload.get('to')}")


@attrs.frozen
class HostileJobs:
    """Jobs with hostile data of their own."""

    failed: int
    markup: int
    deep: int
    control: int
    big: int

    @property
    def ids(self) -> tuple[int, ...]:
        """Every hostile_jobs job."""
        return (self.failed, self.markup, self.deep, self.control, self.big)


def populate(config: Config, db: psycopg.Connection[Any]) -> HostileJobs:
    """A failed job with markup in its error, and jobs whose stored payloads are hostile."""
    failing = JobDefinition(
        config, name="explode", job_function=explode, channel="boom", backoff="none"
    )
    waiting = JobDefinition(config, name="never-run", job_function=explode, channel="idle")
    failed = failing.defer({"to": XSS[2]})
    run_until_empty(config, channel="boom")
    with config.connection() as conn:
        waiting.upsert(conn)

    def insert(payload_json: str) -> int:
        row = db.execute(
            sql.SQL(
                "INSERT INTO {s}.job (definition, channel, payload, max_attempts, limited)"
                " VALUES ('never-run', 'idle', %s::jsonb, 1, false) RETURNING id"
            ).format(s=sql.Identifier(config.schema)),
            (payload_json,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    return HostileJobs(
        failed=failed.id,
        markup=insert(json.dumps({"note": list(XSS), XSS[0]: XSS[1]})),
        deep=insert("[" * DEEP_LEVELS + "]" * DEEP_LEVELS),
        # Control characters, but no NUL: jsonb refuses it (an escaped one is text).
        control=insert(json.dumps({"text": "".join(CONTROL[2:]), "esc": "\\u0000"})),
        # A number beyond what Python converts (4,300 digits), next to 300 kB of text.
        big=insert('{"blob": "' + "x" * 300_000 + '", "n": ' + "9" * 5_000 + "}"),
    )


def digest(db: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    """A digest of every row of the queue's tables."""
    digests = {}
    for table in TABLES:
        row = db.execute(
            sql.SQL(
                "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|'"
                " ORDER BY t::text)), '') FROM {s}.{t} t"
            ).format(s=sql.Identifier(schema), t=sql.Identifier(table))
        ).fetchone()
        assert row is not None
        digests[table] = str(row[0])
    return digests


def _short(value: str) -> str:
    """A label for a hostile value: its start, and its length when long."""
    if len(value) <= 24:
        return repr(value)
    return f"{value[:16]!r}... ({len(value)} chars)"


def _raw_markup(text: str) -> list[str]:
    """The hostile markup strings found unescaped in ``text``."""
    return [x for x in XSS if any(c in x for c in "<>\"'") and x in text]


class Probe:
    """Sends requests through a TestClient and notes every answer that is wrong."""

    def __init__(self, client: TestClient, name: str) -> None:
        self.client = client
        self.name = name
        self.sent = 0
        self.problems: list[str] = []
        #: Requests the client library refused to build (the raw test sends such bytes).
        self.unsent: list[str] = []

    def send(
        self,
        label: str,
        method: str,
        url: str,
        expected: set[int] | None = None,
        **kwargs: Any,
    ) -> httpx2.Response | None:
        """Send one request; note a 5xx, an unexpected status, or markup left unescaped."""
        self.sent += 1
        where = f"{self.name}: {label}: {method} {url[:120]!r}"
        try:
            response = self.client.request(method, url, **kwargs)
        except Exception as exc:  # the client refused to send it: not the server's fault
            if isinstance(exc, httpx2.InvalidURL | httpx2.LocalProtocolError | UnicodeError):
                self.unsent.append(f"{label}: {type(exc).__name__}")
                return None
            self.problems.append(f"{where}: {type(exc).__name__}: {exc}")
            return None
        status = response.status_code
        if status >= 500:
            self.problems.append(f"{where}: {status} {response.text[:200]!r}")
        elif expected is not None and status not in expected:
            self.problems.append(
                f"{where}: {status}, expected {sorted(expected)} ({response.text[:160]!r})"
            )
        if response.headers.get("content-type", "").startswith("text/html"):
            leaked = _raw_markup(response.text)
            if leaked:
                self.problems.append(f"{where}: unescaped markup in the page: {leaked}")
        return response


@pytest.fixture
def hostile_jobs(config: Config, db: psycopg.Connection[Any]) -> HostileJobs:
    """The test's schema with hostile jobs."""
    return populate(config, db)


@pytest.fixture
def clients(config: Config) -> Iterator[dict[str, TestClient]]:
    """Dashboards of the test's Config: read-only, with actions, with authentication.

    Server exceptions come back as 500 responses, which the cases look for.
    """
    apps = {
        "read-only": create_app(config, auth=DashboardAuth()),
        "actions": create_app(config, allow_actions=True, auth=DashboardAuth()),
        "auth": create_app(
            config, auth=DashboardAuth(user="ops", password="s3cret", token="t0ken")
        ),
    }
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(
                TestClient(app, raise_server_exceptions=False, follow_redirects=False)
            )
            for name, app in apps.items()
        }


def _query_cases(probe: Probe, hostile_jobs: HostileJobs) -> None:
    """Hostile values in every query parameter of the job lists, pages and API."""
    for path in ("/jobs", "/api/jobs"):
        for name, expected in PARAMETERS.items():
            for value in HOSTILE_VALUES:
                allowed = expected | ({400} if "\x00" in value else set())
                if value in DEFAULTED:
                    allowed = allowed | {200}
                probe.send(f"{name}={_short(value)}", "GET", path, allowed, params={name: value})
            for escape in BAD_ESCAPES:
                allowed = expected if name not in ("definition", "channel") else {200, 400}
                probe.send(f"{name} {escape}", "GET", f"{path}?{name}={escape}", allowed)
        many = [("status", "failed")] * 500 + [("definition", XSS[0])] * 500
        probe.send("1,000 parameters", "GET", path, {200, 400}, params=many)
    for value in HOSTILE_VALUES:
        probe.send(f"deleted={_short(value)}", "GET", "/jobs", {200}, params={"deleted": value})
        probe.send(
            f"done={_short(value)}",
            "GET",
            f"/jobs/{hostile_jobs.failed}",
            {200},
            params={"done": value},
        )


def _path_cases(probe: Probe, *, actions: bool) -> None:
    """Hostile path segments where a job id, an action or a file name goes."""
    for prefix in PATH_PREFIXES:
        for junk in PATH_JUNK:
            probe.send(f"path {prefix}{_short(junk)}", "GET", prefix + junk, {404, 400})
    for junk in PATH_JUNK:
        for action in ("retry", "cancel", "delete"):
            # A read-only dashboard refuses every action before looking at the job.
            page = {404, 400} if actions or not junk.isdigit() else {403, 404, 400}
            probe.send(f"confirm {_short(junk)}", "GET", f"/jobs/{junk}/{action}", page)
    traversal = probe.send("traversal", "GET", "/static/..%2F..%2F..%2Fpyproject.toml", {404, 400})
    if traversal is not None and "[project]" in traversal.text:
        probe.problems.append("static files: a path outside the static directory was served")


def _method_cases(probe: Probe, hostile_jobs: HostileJobs) -> None:
    """Methods the routes do not take."""
    for route in GET_ROUTES:
        path = route.format(id=hostile_jobs.failed)
        for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            probe.send(f"{method} on a GET route", method, path, {405}, content=b"{}")
    for action in ("retry", "cancel", "delete"):
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            probe.send(
                f"{method} on an API action",
                method,
                f"/api/jobs/{hostile_jobs.failed}/{action}",
                {405},
            )


def _read_only_action_cases(probe: Probe, hostile_jobs: HostileJobs) -> None:
    """A read-only dashboard refuses every action, whatever is sent."""
    for action in ("retry", "cancel", "delete"):
        for job_id in hostile_jobs.ids:
            probe.send("API action", "POST", f"/api/jobs/{job_id}/{action}", {403}, json={})
            probe.send(
                "form action",
                "POST",
                f"/jobs/{job_id}/{action}",
                {403},
                data={"confirm": "yes", "csrf": "0" * 64},
            )


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, html[:500]
    return match.group(1)


def _form_cases(probe: Probe, hostile_jobs: HostileJobs) -> None:
    """The pages' action forms: the CSRF token, the form's shape and size."""
    client = probe.client
    target = f"/jobs/{hostile_jobs.failed}/retry"
    confirm = probe.send("confirmation page", "GET", target, {200})
    assert confirm is not None and confirm.status_code == 200, "no confirmation page to start from"
    token = _csrf(confirm.text)
    session = client.cookies.get("orchestra_session")
    assert session

    form = "application/x-www-form-urlencoded"
    refused = {403}
    probe.send("no token", "POST", target, refused, data={"confirm": "yes"})
    probe.send("forged token", "POST", target, refused, data={"confirm": "yes", "csrf": "0" * 64})
    probe.send("empty token", "POST", target, refused, data={"confirm": "yes", "csrf": ""})
    for value in (*CONTROL, *OVERLONG, *XSS, *SQL_INJECTION, token.upper(), token + "0"):
        # An overlong token may be refused for its size first.
        probe.send(
            f"token {_short(value)}",
            "POST",
            target,
            {403, 413},
            data={"confirm": "yes", "csrf": value},
        )
    probe.send(
        "token in the query string",
        "POST",
        f"{target}?csrf={token}",
        refused,
        data={"confirm": "yes"},
    )
    probe.send("token unticked", "POST", target, {400}, data={"csrf": token, "confirm": "no"})
    # A cross-site form: the SameSite=Strict cookie stays home, the page's token is copied.
    with TestClient(client.app, raise_server_exceptions=False) as stranger:
        foreign = Probe(stranger, f"{probe.name} (another site)")
        foreign.send(
            "cross-site form",
            "POST",
            target,
            refused,
            data={"confirm": "yes", "csrf": token},
            headers={"origin": FOREIGN_ORIGIN, "referer": f"{FOREIGN_ORIGIN}/page"},
        )
        for cookie in ("x" * 40, XSS[0], "a" * 5_000, session + "x"):
            foreign.send(
                "another session's token",
                "POST",
                target,
                refused,
                data={"confirm": "yes", "csrf": token},
                headers={"cookie": f"orchestra_session={cookie}"},
            )
        probe.sent += foreign.sent
        probe.problems += foreign.problems
        probe.unsent += foreign.unsent
    body = f"confirm=yes&csrf={token}".encode()
    for content_type in ("text/plain", "multipart/form-data; boundary=x", "application/json", ""):
        probe.send(
            f"form as {content_type!r}",
            "POST",
            target,
            {415},
            content=body,
            headers={"content-type": content_type},
        )
    fields = "&".join(f"f{i}=1" for i in range(50))
    probe.send(
        "50 fields",
        "POST",
        target,
        {400},
        content=f"{fields}&confirm=yes&csrf={token}".encode(),
        headers={"content-type": form},
    )
    probe.send(
        "invalid UTF-8 form",
        "POST",
        target,
        {400, 403},
        content=b"confirm=yes&csrf=\xff\xfe\x00" + b"\xc3\x28" * 10,
        headers={"content-type": form},
    )
    probe.send(
        "huge form",
        "POST",
        target,
        {413},
        content=b"confirm=yes&csrf=" + token.encode() + b"&pad=" + b"x" * HUGE_BODY_BYTES,
        headers={"content-type": form},
    )


def _api_action_cases(probe: Probe, hostile_jobs: HostileJobs) -> None:
    """The JSON API's actions: content types and bodies that must be refused."""
    bad_bodies: list[tuple[str, bytes, set[int]]] = [
        ("invalid JSON", b"{", {400}),
        ("a JSON array", b"[]", {400}),
        ("JSON null", b"null", {400}),
        ("a JSON number", b"42", {400}),
        ("a JSON string", b'"retry"', {400}),
        ("invalid UTF-8", b"\xff\xfe{}", {400}),
        ("a NUL byte", b"\x00", {400}),
        ("NUL after an object", b"{}\x00", {400}),
        ("two objects", b"{}{}", {400}),
        ("nested within the size limit", b"[" * 8_000 + b"]" * 8_000, {400}),
        ("a huge body", b"{" + b" " * HUGE_BODY_BYTES + b"}", {413}),
    ]
    for action in ("retry", "cancel", "delete"):
        path = f"/api/jobs/{hostile_jobs.failed}/{action}"
        for label, body, expected in bad_bodies:
            probe.send(
                label,
                "POST",
                path,
                expected,
                content=body,
                headers={"content-type": "application/json"},
            )
        for content_type in (
            "application/x-www-form-urlencoded",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/json-seq",
            "",
        ):
            probe.send(
                f"API as {content_type!r}",
                "POST",
                path,
                {415},
                content=b"{}",
                headers={"content-type": content_type, "origin": FOREIGN_ORIGIN},
            )
        for junk in ("0", "9223372036854775808", "9" * 40, "9" * 5_000):
            # A well-formed request for a job that cannot exist.
            probe.send(
                f"API action on job {_short(junk)}",
                "POST",
                f"/api/jobs/{junk}/{action}",
                {404, 400},
                json={},
            )


def _auth_cases(probe: Probe) -> None:
    """Malformed credentials: 401, whatever their shape."""

    def basic(raw: bytes) -> str:
        return "Basic " + base64.b64encode(raw).decode()

    values = [
        "",
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic " + "A" * 20_001,
        basic(b"\xff\xfe:\xff"),
        basic(b"ops"),
        basic(b"ops:"),
        basic(b":s3cret"),
        basic(b"ops:s3cret\x00"),
        basic(b"ops\x00:s3cret"),
        basic(b"ops:wrong"),
        basic(("ops:" + XSS[0]).encode()),
        "Bearer",
        "Bearer ",
        "Bearer t0ke",
        "Bearer t0kenX",
        "Bearer " + "x" * 20_000,
        "Bearer " + SQL_INJECTION[0],
        "Digest username=ops",
        "t0ken",
        "\x00",
        "Basic\x00" + basic(b"ops:s3cret")[6:],
    ]
    for path in ("/", "/api/jobs", "/jobs", "/static/style.css"):
        for value in values:
            probe.send(
                f"authorization {_short(value)}",
                "GET",
                path,
                {401},
                headers={"authorization": value},
            )


def test_hostile_requests_never_fail_the_dashboard_nor_write(
    clients: dict[str, TestClient],
    hostile_jobs: HostileJobs,
    config: Config,
    db: psycopg.Connection[Any],
    report: Report,
) -> None:
    """Hostile parameters, paths, methods, forms, bodies and credentials: each gets the
    4xx that fits (a filter that matches nothing: 200), never a 5xx; pages escape
    everything; the queue's tables are unchanged."""
    before = digest(db, config.schema)
    probes = {name: Probe(client, name) for name, client in clients.items()}

    read_only, actions, auth = probes["read-only"], probes["actions"], probes["auth"]
    for job_id in hostile_jobs.ids:
        for path in (f"/jobs/{job_id}", f"/api/jobs/{job_id}"):
            read_only.send("a hostile job", "GET", path, {200})
    shown = read_only.send("markup as text", "GET", f"/jobs/{hostile_jobs.markup}", {200})
    if shown is not None and "&lt;script&gt;alert(" not in shown.text:
        read_only.problems.append("the job page does not show the payload's markup as text")
    for path in ("/", "/jobs", "/definitions", "/api/overview", "/api/jobs", "/api/definitions"):
        read_only.send("a page of hostile jobs", "GET", path, {200})
    _query_cases(read_only, hostile_jobs)
    _path_cases(read_only, actions=False)
    _path_cases(actions, actions=True)
    _method_cases(read_only, hostile_jobs)
    _read_only_action_cases(read_only, hostile_jobs)
    _form_cases(actions, hostile_jobs)
    _api_action_cases(actions, hostile_jobs)
    _auth_cases(auth)

    after = digest(db, config.schema)
    problems = [p for probe in probes.values() for p in probe.problems]
    problems += [
        f"table {table} changed: {before[table]} -> {after[table]}"
        for table in TABLES
        if before[table] != after[table]
    ]
    _record(
        report,
        "hostile-http-in-process",
        hostile_jobs,
        sum(p.sent for p in probes.values()),
        problems,
        sum(len(p.unsent) for p in probes.values()),
    )
    _hostile.fail_on(problems)


def _record(
    report: Report,
    case: str,
    hostile_jobs: HostileJobs,
    requests: int,
    problems: list[str],
    unsent: int = 0,
) -> None:
    """Record the case's report line (requests sent as faults)."""
    report.record(
        CaseResult(
            case=case,
            jobs=len(hostile_jobs.ids),
            faults=requests,
            lost=0,
            doubled=0,
            duplicate_successes=0,
            seconds=report.elapsed(),
            note=f"wrong_answers={len(problems)} unsent_by_the_client={unsent}",
        )
    )


# -- raw bytes to a real server ---------------------------------------------------------------


def _exchange(port: int, request: bytes, *, timeout: float = 15.0) -> bytes:
    """Send ``request`` as is; the server's answer up to when it closes the connection.

    The requests ask for ``Connection: close`` (or are malformed, which closes
    it too); a server that says nothing for ``timeout`` seconds gets what it
    said so far returned. The sending side stays open: a half-closed
    connection is a client gone away, to which the server need not answer.
    """
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close mid-send
            sock.sendall(request)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65_536):
                chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else None


def _raw_requests(job_id: int) -> Sequence[tuple[str, bytes, set[int]]]:
    host = b"Host: 127.0.0.1\r\nConnection: close\r\n"
    return [
        ("a NUL in the path", b"GET /jobs/\x00 HTTP/1.1\r\n" + host + b"\r\n", {400, 404}),
        (
            "a NUL in the query",
            b"GET /api/jobs?definition=\x00 HTTP/1.1\r\n" + host + b"\r\n",
            {200, 400},
        ),
        (
            "an escaped NUL in the query",
            b"GET /api/jobs?channel=%00 HTTP/1.1\r\n" + host + b"\r\n",
            {200, 400},
        ),
        (
            "raw invalid UTF-8 in the path",
            b"GET /jobs/\xff\xfe HTTP/1.1\r\n" + host + b"\r\n",
            {400, 404},
        ),
        (
            "raw invalid UTF-8 in the query",
            b"GET /jobs?definition=\xff\xfe HTTP/1.1\r\n" + host + b"\r\n",
            {200, 400},
        ),
        (
            "raw markup in the query",
            b"GET /jobs?definition=<script>alert(1)</script> HTTP/1.1\r\n" + host + b"\r\n",
            {200, 400},
        ),
        (
            "control bytes in a header",
            b"GET / HTTP/1.1\r\n" + host + b"X-Evil: a\x01\x7fb\r\n\r\n",
            {200, 400},
        ),
        ("a NUL in a header", b"GET / HTTP/1.1\r\n" + host + b"X-Evil: a\x00b\r\n\r\n", {200, 400}),
        ("a header without a colon", b"GET / HTTP/1.1\r\n" + host + b"garbage\r\n\r\n", {400}),
        (
            "an overlong path",
            b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n" + host + b"\r\n",
            {400, 404, 414, 431},
        ),
        (
            "an overlong header",
            b"GET / HTTP/1.1\r\n" + host + b"X-Big: " + b"b" * 100_000 + b"\r\n\r\n",
            {200, 400, 431},  # the HTTP server's own limit decides
        ),
        ("a bad method", b"G\x00T / HTTP/1.1\r\n" + host + b"\r\n", {400, 405}),
        ("an unknown method", b"BREW / HTTP/1.1\r\n" + host + b"\r\n", {400, 405}),
        ("a bad version", b"GET / HTTP/9.9\r\n" + host + b"\r\n", {200, 400, 505}),
        ("no Host", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", {200, 400}),
        (
            "a body longer than its Content-Length",
            b"POST /api/jobs/"
            + str(job_id).encode()
            + b"/retry HTTP/1.1\r\n"
            + host
            + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n[]{}",
            {400},
        ),
        (
            "a negative Content-Length",
            b"POST /api/jobs/"
            + str(job_id).encode()
            + b"/retry HTTP/1.1\r\n"
            + host
            + b"Content-Type: application/json\r\nContent-Length: -1\r\n\r\n{}",
            {400},
        ),
        (
            "a huge chunked body",
            b"POST /api/jobs/"
            + str(job_id).encode()
            + b"/retry HTTP/1.1\r\n"
            + host
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % (64 * 1024)
            + b"[" * (64 * 1024)
            + b"\r\n0\r\n\r\n",
            {413},
        ),
        (
            "a bad chunk size",
            b"POST /api/jobs/"
            + str(job_id).encode()
            + b"/retry HTTP/1.1\r\n"
            + host
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            {400},
        ),
        (
            "a cross-site form",
            b"POST /jobs/"
            + str(job_id).encode()
            + b"/retry HTTP/1.1\r\n"
            + host
            + b"Origin: "
            + FOREIGN_ORIGIN.encode()
            + b"\r\n"
            + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 20\r\n\r\n"
            + b"confirm=yes&csrf=abc",
            {403},
        ),
    ]


@pytest.fixture
def dashboard_port(
    test_dsn: str,
    config: Config,
    hostile_jobs: HostileJobs,
    e2e_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[int]:
    """``orchestra dashboard --allow-actions`` on the test's schema, in a subprocess."""
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    env = dict(e2e_env)
    for name in (
        "ORCHESTRA_DASHBOARD_USER",
        "ORCHESTRA_DASHBOARD_PASSWORD",
        "ORCHESTRA_DASHBOARD_TOKEN",
    ):
        env.pop(name, None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            orchestra_argv(
                "dashboard", "--dsn", test_dsn, "--schema", config.schema,
                "--port", str(port), "--allow-actions", "--log-level", "warning",
            ),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:

            def answers() -> bool:
                if proc.poll() is not None:
                    pytest.fail(
                        f"the dashboard exited with {proc.returncode}:\n{log_path.read_text()}"
                    )
                try:
                    return _status(_exchange(port, OVERVIEW, timeout=5)) == 200
                except OSError:
                    return False

            wait_until(answers, timeout=60, interval=0.1, message="the dashboard never answered")
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def test_raw_hostile_bytes_get_4xx_from_the_real_server_and_write_nothing(
    dashboard_port: int,
    hostile_jobs: HostileJobs,
    config: Config,
    db: psycopg.Connection[Any],
    report: Report,
) -> None:
    """Bytes no client library sends (raw NUL, invalid UTF-8, broken framing, lying
    lengths, huge chunks): a 4xx or a closed connection, never a 5xx; nothing
    written; the server still answers afterwards."""
    before = digest(db, config.schema)
    problems = []
    requests = _raw_requests(hostile_jobs.failed)
    for label, request, expected in requests:
        answer = _exchange(dashboard_port, request)
        status = _status(answer)
        if status is None:
            if answer:
                problems.append(f"{label}: not an HTTP answer: {answer[:120]!r}")
            continue  # the server closed the connection without a word: acceptable
        if status >= 500 or status not in expected:
            problems.append(f"{label}: {status}, expected {sorted(expected)}: {answer[:300]!r}")
        if b"text/html" in answer.split(b"\r\n\r\n", 1)[0] and b"<script>alert(1)" in answer:
            problems.append(f"{label}: unescaped markup in the page")
    final = _exchange(dashboard_port, OVERVIEW)
    if _status(final) != 200:
        problems.append(f"the server no longer answers: {final[:200]!r}")
    after = digest(db, config.schema)
    problems += [
        f"table {table} changed: {before[table]} -> {after[table]}"
        for table in TABLES
        if before[table] != after[table]
    ]
    _record(report, "hostile-http-raw", hostile_jobs, len(requests), problems)
    _hostile.fail_on(problems)
