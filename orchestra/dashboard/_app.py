"""The dashboard's Starlette app: HTML pages, the JSON API under ``/api``, and the actions.

Pages and API read through ``config.jobs_async`` (orchestra/_jobs.py) and the
read-only queries of ``orchestra/sql/monitoring.sql``. Retry, cancel and delete
are refused (buttons hidden, POST answered 403) unless the app is created with
``allow_actions=True``, and so are their bulk forms (a selection of jobs, or
every failed job of a definition) and pausing or resuming a channel or a
definition (``config.channels_async``, ``config.definitions_async``). In the
HTML pages an action takes two steps: a confirmation page (GET) and its form
(POST, with a CSRF token and a ticked box); pausing, reversible and
idempotent, takes one: its buttons (on the definitions page) post their form,
with a CSRF token, at once. The JSON API takes a POST with a JSON body, which
a cross-site form cannot send. Everything shown is HTML-escaped by Jinja's autoescape, and
the Content-Security-Policy forbids inline scripts besides.

The overview, the jobs list and the charts refresh themselves: app.js polls
``/live/...``, which answers JSON carrying the page's regions rendered by the
same templates (so one renderer serves the first load and the updates).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import jinja2
import psycopg
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from orchestra import __version__, _db
from orchestra._checks import CHANNEL_RE, NAME_MAX_LENGTH, TAG_MAX_LENGTH, check_name, check_tags
from orchestra._config import Config
from orchestra._names import escape_unprintable, first_unprintable
from orchestra._records import STATUSES, Job
from orchestra.dashboard import _data, _openapi
from orchestra.dashboard._auth import (
    SESSION_COOKIE,
    DashboardAuth,
    Guard,
    csrf_token,
    csrf_valid,
    is_api_path,
    new_session,
)
from orchestra.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    JobStateError,
    OrchestraError,
    SchemaNotReadyError,
    UnknownDefinitionError,
    UnknownJobError,
)

logger = logging.getLogger("orchestra.dashboard")

ACTIONS = ("retry", "cancel", "delete")
#: What can be paused, and the two verbs.
PAUSABLE = ("channel", "definition")
PAUSE_VERBS = ("pause", "resume")
PAGE_SIZES = (25, 50, 100, 200)
PAGE_SIZE_DEFAULT = 50
API_LIMIT_MAX = 1000
#: Largest request body read (forms and JSON bodies are tiny).
BODY_BYTES_MAX = 16_384
#: The query parameters of the job lists (other parameters are ignored).
FILTERS = ("status", "definition", "channel", "tag", "limit", "offset", "order", "q")
#: Most jobs one bulk action takes (the largest page of the jobs list).
BULK_IDS_MAX = 200
#: How often a page's live regions are fetched again (ms), by page; the
#: charts read more rows, and change slowly at their bucket sizes. A running
#: job's page follows its progress (written at most every 0.5 s) closer.
LIVE_INTERVAL_MS = {"overview": 5000, "jobs": 5000, "charts": 30_000, "job": 2000}
#: The order a bulk action takes its jobs in: a dependency has a smaller id
#: than its dependents, so retries go up (a dependency is back before the jobs
#: that wait for it) and deletes down (a dependent is gone before its
#: dependency, which it would otherwise hold back).
_BULK_ASCENDING = {"retry": True, "cancel": False, "delete": False}
#: Most characters of a bad parameter quoted back in an error message.
ECHO_CHARS_MAX = 40


class _JobIdConvertor(Convertor[int]):
    """A job id in a path. Bounded: a longer number is no job, and too long for int()."""

    regex = "[0-9]{1,30}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("orchestra_job_id", _JobIdConvertor())

_EXPLANATIONS = {
    "retry": "The job runs again with a fresh attempt budget: it becomes available now, or "
    "waiting if one of its dependencies has not succeeded. Its result is cleared; its attempt "
    "log is kept.",
    "cancel": "The job is finalized as cancelled. If it is running, its worker stops it "
    "(a sync function is asked to stop and stops when it returns). Jobs that depend on it "
    "will fail.",
    "delete": "The job is deleted with its attempt log. This cannot be undone.",
}
_DONE = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}
_BULK_EXPLANATIONS = {
    "retry": "Each job runs again with a fresh attempt budget, as a retry of one job does. "
    "Jobs are retried one by one, lowest id first; a job whose state does not allow it "
    "is left as it is and listed as refused.",
    "cancel": "Each job is finalized as cancelled. Running jobs are stopped by their workers "
    "(sync functions are asked to stop); jobs that depend on a cancelled job will fail.",
    "delete": "Each job is deleted with its attempt log, highest id first. This cannot be "
    "undone. Running jobs, and jobs an unfinished job depends on, are refused.",
}


# -- formatting helpers (Jinja filters) --------------------------------------------------


def _utc(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} days"


def _ago(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "never"
    seconds = (now - value).total_seconds()
    return f"{_span(seconds)} ago" if seconds >= 0 else f"in {_span(seconds)}"


def _duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None or end is None:
        return ""
    return _span((end - start).total_seconds())


def _ms(value: int | None) -> str:
    if value is None:
        return "—"
    if value % 3_600_000 == 0 and value:
        return f"{value // 3_600_000} h"
    if value % 60_000 == 0 and value:
        return f"{value // 60_000} min"
    if value % 1000 == 0 and value:
        return f"{value // 1000} s"
    return f"{value} ms"


def _first_line(text: str | None, limit: int = 160) -> str:
    if not text or not text.strip():
        return ""
    first = text.strip().splitlines()[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("orchestra.dashboard", "templates"),
        autoescape=True,  # every template is HTML: user data is always escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        utc=_utc,
        ago=_ago,
        duration=_duration,
        ms=_ms,
        first_line=_first_line,
        pretty=_data.pretty,
    )
    return env


class _JSON(JSONResponse):
    """JSON with datetimes as ISO 8601 and non-ASCII text as is."""

    def render(self, content: Any) -> bytes:
        return _data.dumps(content).encode("utf-8")


def allowed_actions(job: Job) -> list[str]:
    """The actions the job's state allows (the database re-checks when one is taken)."""
    allowed = []
    if job.status in ("scheduled", "available", "succeeded", "failed", "cancelled"):
        allowed.append("retry")
    if job.status in ("waiting", "scheduled", "available", "running"):
        allowed.append("cancel")
    if job.status != "running":
        allowed.append("delete")
    return allowed


def _error_status(exc: Exception) -> tuple[int, str]:
    """The HTTP status and message an exception raised by a handler calls for."""
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    if isinstance(exc, UnknownJobError | UnknownDefinitionError):
        return 404, str(exc)
    if isinstance(exc, JobStateError):
        return 409, str(exc)
    if isinstance(exc, ConfigurationError):
        return 400, str(exc)
    if isinstance(exc, DatabaseUnavailableError | SchemaNotReadyError):
        # redact knows the DSNs this process connected with: their passwords are hidden.
        return 503, _db.redact(str(exc))
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return 403, "the dashboard's database role lacks the privilege for this"
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return 503, "the queue's schema is missing or not migrated: run `orchestra migrate`"
    if isinstance(exc, psycopg.OperationalError):
        return 503, "the database is unavailable; try again shortly"
    return 500, "internal error; see the dashboard's log"


class Dashboard:
    """The request handlers of one app, bound to its Config and settings."""

    def __init__(self, config: Config, *, allow_actions: bool, secret: bytes) -> None:
        self.config = config
        self.allow_actions = allow_actions
        self.secret = secret
        self.env = _environment()

    # -- shared plumbing ----------------------------------------------------------------

    @staticmethod
    def _url(request: Request, name: str, /, **params: Any) -> str:
        return request.url_for(name, **params).path

    def _href(self, request: Request, name: str, /, **query: Any) -> str:
        """The path of route ``name`` (no path parameters) with a query string."""
        path = self._url(request, name)
        kept = {key: value for key, value in query.items() if value not in (None, "")}
        return f"{path}?{urllib.parse.urlencode(kept, doseq=True)}" if kept else path

    def render(self, request: Request, template: str, **context: Any) -> str:
        """Render ``template`` (a page or a page's region) with the context every page has."""
        return self.env.get_template(template).render(
            url=functools.partial(self._url, request),
            href=functools.partial(self._href, request),
            schema=self.config.schema,
            version=__version__,
            allow_actions=self.allow_actions,
            statuses=STATUSES,
            nav=context.pop("nav", ""),
            live=context.pop("live", None),
            **context,
        )

    def page(
        self, request: Request, template: str, *, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        """Render ``template`` with the context every page has."""
        return HTMLResponse(self.render(request, template, **context), status_code)

    def live(
        self, request: Request, regions: Mapping[str, tuple[str, Mapping[str, Any]]]
    ) -> Response:
        """The JSON a page's live refresh reads: each region's template rendered again.

        ``regions`` maps an element id of the page to the template of its
        content and that template's context.
        """
        return _JSON(
            {
                "now": dt.datetime.now(dt.UTC),
                "regions": {
                    element_id: self.render(request, template, **context)
                    for element_id, (template, context) in regions.items()
                },
            }
        )

    def _live_settings(self, request: Request, name: str, **query: Any) -> dict[str, Any]:
        """What a page's live control needs: the URL it polls and how often."""
        return {
            "url": self._href(request, f"live_{name}", **query),
            "interval_ms": LIVE_INTERVAL_MS[name],
        }

    async def on_error(self, request: Request, exc: Exception) -> Response:
        """Answer an error as JSON under /api, as a page elsewhere."""
        status, message = _error_status(exc)
        if status >= 500:
            # Escaped: a line break from the request or the error must not forge a log line.
            logger.error(
                "dashboard: %s %s failed: %s",
                request.method,
                escape_unprintable(request.url.path),
                escape_unprintable(_db.redact(str(exc))),
            )
        headers = exc.headers if isinstance(exc, HTTPException) else None
        if is_api_path(request.scope) or _is_live_path(request):
            return _JSON({"error": message, "status": status}, status, headers=headers)
        headings = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Refused"}
        response = self.page(
            request,
            "error.html",
            status_code=status,
            title=headings.get(status, "Error"),
            heading=headings.get(status, f"Error {status}"),
            message=message,
        )
        response.headers.update(headers or {})
        return response

    @staticmethod
    async def _body(request: Request) -> bytes:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > BODY_BYTES_MAX:
                raise HTTPException(413, "request body too large")
        return body

    @staticmethod
    def _job_id(request: Request) -> int:
        job_id: int = request.path_params["job_id"]
        return job_id

    def _require_actions(self) -> None:
        if not self.allow_actions:
            raise HTTPException(
                403, "actions are disabled: start the dashboard with --allow-actions"
            )

    async def _act(self, action: str, job_id: int) -> Job | None:
        jobs = self.config.jobs_async
        if action == "retry":
            return await jobs.retry(job_id)
        if action == "cancel":
            return await jobs.cancel(job_id)
        await jobs.delete(job_id)
        return None

    async def _act_on_each(self, action: str, ids: list[int]) -> list[dict[str, Any]]:
        """Take ``action`` on each job, one by one; each job's outcome, by id.

        A job that is gone or whose state refuses the action is reported and
        skipped; any other error (the database, a missing privilege) stops the
        run and is answered as for one job.
        """
        outcomes = []
        for job_id in sorted(ids, reverse=not _BULK_ASCENDING[action]):
            try:
                job = await self._act(action, job_id)
            except UnknownJobError:
                outcomes.append({"id": job_id, "ok": False, "status": None, "error": "no such job"})
            except JobStateError as exc:
                outcomes.append(
                    {"id": job_id, "ok": False, "status": exc.status, "error": str(exc)}
                )
            else:
                status = None if job is None else job.status
                outcomes.append({"id": job_id, "ok": True, "status": status, "error": None})
        done = sum(1 for outcome in outcomes if outcome["ok"])
        logger.info("dashboard: bulk %s of %d jobs: %d done", action, len(ids), done)
        return sorted(outcomes, key=lambda outcome: int(outcome["id"]))

    async def _json_body(self, request: Request) -> dict[str, Any]:
        """The request's JSON object; 415 for another content type, 400 for other JSON."""
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            raise HTTPException(415, "send a JSON body ({}) with Content-Type: application/json")
        body = await self._body(request)
        try:
            document = json.loads(body) if body.strip() else {}
        except ValueError:
            raise HTTPException(400, "the body is not valid JSON") from None
        except RecursionError:  # a few kilobytes of "[" nest deeper than the parser goes
            raise HTTPException(400, "the body is nested too deeply") from None
        if not isinstance(document, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return document

    async def _form(self, request: Request, max_fields: int) -> dict[str, list[str]]:
        """The request's urlencoded form, every value of each field; 415 for another type."""
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
        try:
            return urllib.parse.parse_qs(
                (await self._body(request)).decode("utf-8", "replace"),
                keep_blank_values=True,
                max_num_fields=max_fields,
            )
        except ValueError:
            raise HTTPException(400, "malformed form") from None

    def _check_csrf(self, session: str, token: str | None) -> None:
        if not csrf_valid(self.secret, session, token):
            raise HTTPException(
                403,
                "this form expired or was not sent from this dashboard: "
                "go back, reload the page and try again",
            )

    @staticmethod
    def _session(request: Request) -> tuple[str, bool]:
        """The browser's CSRF session id, or a new one (then True: set the cookie)."""
        session = request.cookies.get(SESSION_COOKIE) or ""
        if 20 <= len(session) <= 100:
            return session, False
        return new_session(), True

    def _keep_session(self, request: Request, response: Response, session: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=self._url(request, "overview"),
        )

    def _filters(self, request: Request, *, api: bool) -> dict[str, Any]:
        """Status, definition, channel, limit, offset and order from the query string."""
        query = request.query_params
        for name in FILTERS:
            for value in query.getlist(name):
                _check_text(name, value)
        statuses = [s for s in query.getlist("status") if s]
        for value in statuses:
            if value not in STATUSES:
                raise HTTPException(
                    400, f"unknown status {value!r}: use one of {', '.join(STATUSES)}"
                )
        if not api and len(statuses) > 1:
            statuses = statuses[:1]
        order = query.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise HTTPException(400, "order must be 'asc' or 'desc'")
        high = API_LIMIT_MAX if api else max(PAGE_SIZES)
        text = (query.get("q") or "").strip()
        if len(text) > _data.SEARCH_TEXT_MAX:
            raise HTTPException(
                400, f"q must be at most {_data.SEARCH_TEXT_MAX} characters, got {len(text)}"
            )
        tag = query.get("tag") or None
        if tag is not None:
            try:
                check_tags([tag], "tag")
            except ConfigurationError as exc:
                raise HTTPException(400, str(exc)) from None
        return {
            "statuses": statuses,
            "definition": query.get("definition") or None,
            "channel": query.get("channel") or None,
            "tag": tag,
            "limit": _int_param(query.get("limit"), "limit", PAGE_SIZE_DEFAULT, 1, high),
            "offset": _int_param(query.get("offset"), "offset", 0, 0, 2**62),
            "order": order,
            "q": text or None,
        }

    async def _page_of_jobs(self, filters: Mapping[str, Any]) -> tuple[list[Job], int]:
        if filters["q"] is not None:
            return await _data.search_jobs(
                self.config,
                filters["q"],
                statuses=filters["statuses"],
                definition=filters["definition"],
                channel=filters["channel"],
                tag=filters["tag"],
                limit=filters["limit"],
                offset=filters["offset"],
                order=filters["order"],
            )
        jobs = self.config.jobs_async
        selection = {
            "status": filters["statuses"] or None,
            "definition": filters["definition"],
            "channel": filters["channel"],
            "tag": filters["tag"],
        }
        found = await jobs.list(
            **selection, limit=filters["limit"], offset=filters["offset"], order=filters["order"]
        )
        return found, await jobs.count(**selection)

    # -- HTML pages ---------------------------------------------------------------------

    async def _overview_context(self) -> dict[str, Any]:
        data = await _data.overview(self.config)
        return {"data": data, "chart": _data.chart(data["throughput"]["buckets"])}

    async def overview_page(self, request: Request) -> Response:
        """Counts by status and channel, the last hour's throughput, daemons and leader."""
        return self.page(
            request,
            "overview.html",
            title="Overview",
            nav="overview",
            live=self._live_settings(request, "overview"),
            **await self._overview_context(),
        )

    async def live_overview(self, request: Request) -> Response:
        """GET /live/overview: the overview's content, for its live refresh."""
        return self.live(
            request, {"live-overview": ("_overview.html", await self._overview_context())}
        )

    async def _jobs_context(self, request: Request) -> dict[str, Any]:
        """The jobs list's filters, page of jobs, pager and search note."""
        filters = self._filters(request, api=False)
        found, total = await self._page_of_jobs(filters)
        status = filters["statuses"][0] if filters["statuses"] else None
        base = {
            "status": status,
            "definition": filters["definition"],
            "channel": filters["channel"],
            "tag": filters["tag"],
            "q": filters["q"],
            "order": filters["order"] if filters["order"] != "desc" else None,
            "limit": filters["limit"] if filters["limit"] != PAGE_SIZE_DEFAULT else None,
        }
        offset, limit = filters["offset"], filters["limit"]
        return {
            "jobs": found,
            "total": total,
            "filters": {**filters, "status": status},
            "base_query": {**base, "offset": offset or None},
            "previous_href": (
                self._href(request, "jobs", **base, offset=max(0, offset - limit) or None)
                if offset > 0
                else None
            ),
            "next_href": (
                self._href(request, "jobs", **base, offset=offset + limit)
                if offset + limit < total
                else None
            ),
            "search_window": _data.SEARCH_WINDOW,
            "search_max": _data.SEARCH_TEXT_MAX,
            "tag_max": TAG_MAX_LENGTH,
        }

    async def live_jobs(self, request: Request) -> Response:
        """GET /live/jobs: the jobs list's results (same filters as /jobs), for its live refresh."""
        context = await self._jobs_context(request)
        return self.live(request, {"live-jobs": ("_jobs.html", context)})

    async def jobs_page(self, request: Request) -> Response:
        """A page of jobs, filtered by status, definition and channel, or searched."""
        context = await self._jobs_context(request)
        filters = context["filters"]
        infos = await self.config.jobs_async.definitions()
        names = sorted({info.name for info in infos} | {filters["definition"]} - {None})
        channels = sorted({info.channel for info in infos} | {filters["channel"]} - {None})
        failed_of_definition = next(
            (info.counts.get("failed", 0) for info in infos if info.name == filters["definition"]),
            0,
        )
        deleted = request.query_params.get("deleted", "")
        retried = request.query_params.get("retried", "")
        # ASCII digits only: str.isdigit() also accepts characters int() refuses ("²").
        flash = f"Job {int(deleted)} was deleted." if re.fullmatch("[0-9]{1,30}", deleted) else None
        if flash is None and filters["definition"] and re.fullmatch("[0-9]{1,30}", retried):
            count = int(retried)
            flash = (
                f"{count} failed job{'' if count == 1 else 's'} of {filters['definition']} "
                f"{'was' if count == 1 else 'were'} retried."
            )
        live_query = {
            key: value for key, value in context["base_query"].items() if value is not None
        }
        return self.page(
            request,
            "jobs.html",
            title="Jobs",
            nav="jobs",
            definition_names=names,
            channels=channels,
            page_sizes=PAGE_SIZES,
            flash=flash,
            failed_of_definition=failed_of_definition,
            live=self._live_settings(request, "jobs", **live_query),
            **context,
        )

    async def job_page(self, request: Request) -> Response:
        """One job: payload, result, attempts with errors and tracebacks, dependencies."""
        job_id = self._job_id(request)
        job = await self.config.jobs_async.get(job_id, with_attempts=True)
        links = await _data.job_links(self.config, job_id)
        graph = await _data.job_graph(self.config, job_id)
        done = request.query_params.get("done", "")
        flash = None
        if done in _DONE:
            flash = f"Job {job.id} was {_DONE[done]}; it is now {job.status}."
        return self.page(
            request,
            "job.html",
            title=f"Job {job.id}",
            nav="jobs",
            job=job,
            links=links,
            graph=graph,
            drawing=_data.graph_drawing(graph),
            actions=allowed_actions(job),
            tracebacks=[a for a in reversed(job.attempts or ()) if a.traceback],
            now=dt.datetime.now(dt.UTC),
            flash=flash,
            progress=_data.progress_view(job.progress),
            # An unfinished job's state and progress follow it; a finished one's stay.
            live=None
            if job.is_finalized
            else {
                "url": self._url(request, "live_job", job_id=job.id),
                "interval_ms": LIVE_INTERVAL_MS["job"],
            },
        )

    async def live_job(self, request: Request) -> Response:
        """GET /live/jobs/{job_id}: a job's status, attempt and progress, for its page's
        live refresh."""
        job = await self.config.jobs_async.get(self._job_id(request), with_attempts=False)
        context = {
            "job": job,
            "progress": _data.progress_view(job.progress),
            "now": dt.datetime.now(dt.UTC),
        }
        # The workflow's statuses move with the job's (its dependencies finish).
        graph = await _data.job_graph(self.config, job.id)
        workflow = {"graph": graph, "drawing": _data.graph_drawing(graph)}
        return self.live(
            request,
            {
                "live-job": ("_job_live.html", context),
                "live-workflow": ("_job_workflow.html", workflow),
            },
        )

    @staticmethod
    def _hours(request: Request) -> int:
        value = request.query_params.get("hours") or str(_data.CHART_RANGES_H[0])
        _check_text("hours", value)
        choices = ", ".join(str(h) for h in _data.CHART_RANGES_H)
        if value not in {str(h) for h in _data.CHART_RANGES_H}:
            raise HTTPException(400, f"hours must be one of {choices}, got {_echo(value)}")
        return int(value)

    async def _charts_context(self, hours: int) -> dict[str, Any]:
        data = await _data.activity(self.config, hours)
        return {
            "data": data,
            "charts": _data.activity_charts(data),
            "wait_label": _data.wait_label,
        }

    async def charts_page(self, request: Request) -> Response:
        """Throughput and failures per definition over time, and queue wait."""
        hours = self._hours(request)
        return self.page(
            request,
            "charts.html",
            title="Charts",
            nav="charts",
            hours=hours,
            ranges=_data.CHART_RANGES_H,
            live=self._live_settings(request, "charts", hours=hours),
            **await self._charts_context(hours),
        )

    async def live_charts(self, request: Request) -> Response:
        """GET /live/charts: the charts page's content, for its live refresh."""
        context = await self._charts_context(self._hours(request))
        return self.live(request, {"live-charts": ("_charts.html", context)})

    def _bulk_page(
        self,
        request: Request,
        action: str,
        ids: list[int],
        jobs: Mapping[int, Job],
        *,
        session: str,
        error: str | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        rows = []
        for job_id in ids:
            job = jobs.get(job_id)
            allowed = job is not None and action in allowed_actions(job)
            rows.append({"id": job_id, "job": job, "allowed": allowed})
        actionable = sum(1 for row in rows if row["allowed"])
        if not actionable and error is None:
            error = f"None of the selected jobs can be {_DONE[action]} now."
            status_code = 409
        return self.page(
            request,
            "bulk_confirm.html",
            status_code=status_code,
            title=f"{action.capitalize()} {len(ids)} job{'' if len(ids) == 1 else 's'}",
            nav="jobs",
            action=action,
            rows=rows,
            actionable=actionable,
            explanation=_BULK_EXPLANATIONS[action],
            csrf=csrf_token(self.secret, session),
            error=error,
            blocked=not actionable,
            done_word=_DONE[action],
        )

    async def bulk_page(self, request: Request) -> Response:
        """GET: confirm an action on the selected jobs (``id`` repeated). POST: take it."""
        self._require_actions()
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if action not in ACTIONS:  # pragma: no cover (the routes name them)
            raise HTTPException(404, "no such action")
        if request.method == "POST":
            session = request.cookies.get(SESSION_COOKIE) or ""
            fields = await self._form(request, BULK_IDS_MAX + 10)
            self._check_csrf(session, _field(fields, "csrf"))
            ids = _job_ids(fields.get("id", []))
            if _field(fields, "confirm") != "yes":
                jobs = await _data.jobs_by_ids(self.config, ids)
                return self._bulk_page(
                    request,
                    action,
                    ids,
                    jobs,
                    session=session,
                    error="Tick the box to confirm.",
                    status_code=400,
                )
            outcomes = await self._act_on_each(action, ids)
            done = sum(1 for outcome in outcomes if outcome["ok"])
            return self.page(
                request,
                "bulk_done.html",
                title=f"Bulk {action}",
                nav="jobs",
                action=action,
                outcomes=outcomes,
                done=done,
                refused=len(outcomes) - done,
                done_word=_DONE[action],
            )
        ids = _job_ids(request.query_params.getlist("id"))
        jobs = await _data.jobs_by_ids(self.config, ids)
        session, fresh = self._session(request)
        response = self._bulk_page(request, action, ids, jobs, session=session)
        if fresh:
            self._keep_session(request, response, session)
        return response

    async def retry_failed_page(self, request: Request) -> Response:
        """GET: confirm retrying every failed job of a definition. POST: retry them."""
        self._require_actions()
        if request.method == "POST":
            session = request.cookies.get(SESSION_COOKIE) or ""
            fields = await self._form(request, 10)
            self._check_csrf(session, _field(fields, "csrf"))
            definition = _definition_param(_field(fields, "definition") or "")
            if _field(fields, "confirm") != "yes":
                failed = await _data.definition_failed(self.config, definition)
                return self._retry_failed_page(
                    request,
                    definition,
                    failed or 0,
                    session=session,
                    error="Tick the box to confirm.",
                    status_code=400,
                )
            retried = await self.config.jobs_async.retry_failed(definition=definition)
            logger.info("dashboard: retried %d failed jobs of %r", retried, definition)
            target = self._href(request, "jobs", definition=definition, retried=retried)
            return RedirectResponse(target, status_code=303)
        definition = _definition_param(request.query_params.get("definition", ""))
        failed = await _data.definition_failed(self.config, definition)
        if failed is None:
            raise HTTPException(404, f"no definition named {_echo(definition)} is stored")
        session, fresh = self._session(request)
        response = self._retry_failed_page(request, definition, failed, session=session)
        if fresh:
            self._keep_session(request, response, session)
        return response

    def _retry_failed_page(
        self,
        request: Request,
        definition: str,
        failed: int,
        *,
        session: str,
        error: str | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        return self.page(
            request,
            "retry_failed.html",
            status_code=status_code,
            title=f"Retry failed jobs of {definition}",
            nav="jobs",
            definition=definition,
            failed=failed,
            csrf=csrf_token(self.secret, session),
            error=error,
        )

    async def _pause(self, kind: str, verb: str, name: str) -> dict[str, Any]:
        """Pause or resume the channel or definition ``name``; what the API answers."""
        if kind == "channel":
            channels = self.config.channels_async
            changed = await (channels.pause(name) if verb == "pause" else channels.resume(name))
        else:
            definitions = self.config.definitions_async
            changed = await (
                definitions.pause(name) if verb == "pause" else definitions.resume(name)
            )
        logger.info(
            "dashboard: %s %s %s%s",
            verb,
            kind,
            escape_unprintable(name),
            "" if changed else " (nothing to change)",
        )
        return {"kind": kind, "name": name, "paused": verb == "pause", "changed": changed}

    @staticmethod
    def _pause_target(request: Request) -> tuple[str, str, str]:
        """(kind, verb, name) of a pause or resume request, the name checked (400 if bad)."""
        path = _app_path(request)
        # By the start of the path: a definition's name may hold "/channels/".
        kind = "channel" if path.startswith(("/channels/", "/api/channels/")) else "definition"
        verb = path.rsplit("/", 1)[-1]
        name: str = request.path_params["name"]
        if kind == "channel":
            check_name(name, "channel", pattern=CHANNEL_RE)
        else:
            name = _definition_param(name)
        return kind, verb, name

    async def pause_form(self, request: Request) -> Response:
        """POST from the definitions page: pause or resume, then back to the page."""
        self._require_actions()
        session = request.cookies.get(SESSION_COOKIE) or ""
        fields = await self._form(request, 10)
        self._check_csrf(session, _field(fields, "csrf"))
        kind, verb, name = self._pause_target(request)
        await self._pause(kind, verb, name)
        return RedirectResponse(self._url(request, "definitions"), status_code=303)

    async def api_pause(self, request: Request) -> Response:
        """POST /api/channels/{name}/pause|resume and /api/definitions/{name}/pause|resume."""
        self._require_actions()
        kind, verb, name = self._pause_target(request)
        await self._json_body(request)
        return _JSON(await self._pause(kind, verb, name))

    async def definitions_page(self, request: Request) -> Response:
        """Every definition: settings, next tick, rate limit, heartbeat, job counts; the
        channels, paused or not (with pause and resume buttons when actions are allowed)."""
        now = dt.datetime.now(dt.UTC)
        loaded = self.config.definitions
        rows = []
        infos = await self.config.jobs_async.definitions()
        paused = {p.channel: p for p in await self.config.channels_async.paused()}
        channels = [
            {"name": name, "paused": paused.get(name)}
            for name in sorted({info.channel for info in infos} | set(paused))
        ]
        for info in infos:
            local = loaded.get(info.name)
            tick, computed = _data.next_tick(info, now, local.cron_timezone if local else None)
            if info.cron is not None and local is None:
                basis_short = "computed in UTC"
                basis = (
                    "No orchestrator stored the next tick, and this dashboard does not load the "
                    "definition (--app), so its cron time zone is unknown: read in UTC."
                )
            else:
                basis_short = "computed"
                basis = "No orchestrator stored the next tick: computed from the schedule."
            rows.append(
                {
                    "info": info,
                    "next_tick": tick,
                    "computed": computed,
                    "basis": basis,
                    "basis_short": basis_short,
                }
            )
        session, fresh = self._session(request)
        response = self.page(
            request,
            "definitions.html",
            title="Definitions",
            nav="definitions",
            definitions=rows,
            channels=channels,
            now=now,
            csrf=csrf_token(self.secret, session),
        )
        if fresh:
            self._keep_session(request, response, session)
        return response

    def _confirm_page(
        self,
        request: Request,
        action: str,
        job: Job,
        *,
        session: str,
        error: str | None = None,
        status_code: int = 200,
        blocked: bool = False,
    ) -> HTMLResponse:
        return self.page(
            request,
            "confirm.html",
            status_code=status_code,
            title=f"{action.capitalize()} job {job.id}",
            nav="jobs",
            action=action,
            job=job,
            explanation=_EXPLANATIONS[action],
            csrf=csrf_token(self.secret, session),
            error=error,
            blocked=blocked,
        )

    async def confirm_page(self, request: Request) -> Response:
        """GET: the confirmation step of an action. POST: take the action."""
        self._require_actions()
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if action not in ACTIONS:  # pragma: no cover (the routes name them)
            raise HTTPException(404, "no such action")
        job_id = self._job_id(request)
        if request.method == "POST":
            session = request.cookies.get(SESSION_COOKIE) or ""
            return await self._confirmed(request, action, job_id, session)
        job = await self.config.jobs_async.get(job_id, with_attempts=False)
        session, fresh = self._session(request)
        if action in allowed_actions(job):
            response = self._confirm_page(request, action, job, session=session)
        else:
            response = self._confirm_page(
                request,
                action,
                job,
                session=session,
                error=f"A {job.status} job cannot be {_DONE[action]}.",
                status_code=409,
                blocked=True,
            )
        if fresh:
            self._keep_session(request, response, session)
        return response

    async def _confirmed(
        self, request: Request, action: str, job_id: int, session: str
    ) -> Response:
        fields = await self._form(request, 10)
        form = {key: values[0] for key, values in fields.items()}
        if not csrf_valid(self.secret, session, form.get("csrf")):
            raise HTTPException(
                403,
                "this form expired or was not sent from this dashboard: "
                "go back to the job, reload it and try again",
            )
        if form.get("confirm") != "yes":
            job = await self.config.jobs_async.get(job_id, with_attempts=False)
            return self._confirm_page(
                request,
                action,
                job,
                session=session,
                error="Tick the box to confirm.",
                status_code=400,
            )
        try:
            await self._act(action, job_id)
        except JobStateError as exc:
            job = await self.config.jobs_async.get(job_id, with_attempts=False)
            return self._confirm_page(
                request, action, job, session=session, error=str(exc), status_code=409
            )
        logger.info("dashboard: %s job %d", action, job_id)
        if action == "delete":
            target = self._href(request, "jobs", deleted=job_id)
        else:
            target = self._url(request, "job", job_id=job_id) + f"?done={action}"
        return RedirectResponse(target, status_code=303)

    # -- JSON API -----------------------------------------------------------------------

    async def api_overview(self, request: Request) -> Response:
        """GET /api/overview."""
        data = await _data.overview(self.config)
        return _JSON({**data, "allow_actions": self.allow_actions})

    async def api_jobs(self, request: Request) -> Response:
        """GET /api/jobs."""
        filters = self._filters(request, api=True)
        found, total = await self._page_of_jobs(filters)
        return _JSON(
            {
                "total": total,
                "limit": filters["limit"],
                "offset": filters["offset"],
                "order": filters["order"],
                "q": filters["q"],
                "search_window": _data.SEARCH_WINDOW,
                "jobs": [_data.plain(job) for job in found],
            }
        )

    async def api_charts(self, request: Request) -> Response:
        """GET /api/charts."""
        return _JSON(await _data.activity(self.config, self._hours(request)))

    async def api_bulk(self, request: Request) -> Response:
        """POST /api/jobs/bulk/retry|cancel|delete with {"ids": [...]}."""
        self._require_actions()
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        document = await self._json_body(request)
        ids = document.get("ids")
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids
        ):
            raise HTTPException(400, "ids must be a list of job ids (integers)")
        checked = _job_ids([str(i) for i in ids])
        outcomes = await self._act_on_each(action, checked)
        done = sum(1 for outcome in outcomes if outcome["ok"])
        return _JSON(
            {"action": action, "done": done, "refused": len(outcomes) - done, "jobs": outcomes}
        )

    async def api_retry_failed(self, request: Request) -> Response:
        """POST /api/jobs/retry-failed with {"definition": name}."""
        self._require_actions()
        document = await self._json_body(request)
        definition = document.get("definition")
        if not isinstance(definition, str):
            raise HTTPException(400, "definition must be a definition's name (a string)")
        definition = _definition_param(definition)
        retried = await self.config.jobs_async.retry_failed(definition=definition)
        logger.info("dashboard API: retried %d failed jobs of %r", retried, definition)
        return _JSON({"definition": definition, "retried": retried})

    async def api_job(self, request: Request) -> Response:
        """GET /api/jobs/{job_id}."""
        job_id = self._job_id(request)
        job = await self.config.jobs_async.get(job_id, with_attempts=True)
        links = await _data.job_links(self.config, job_id)
        graph = await _data.job_graph(self.config, job_id)
        return _JSON(
            {
                **_data.plain(job),
                "dependencies": links["requires"],
                "dependents": links["required_by"],
                "graph": _data.graph_document(graph),
            }
        )

    async def api_definitions(self, request: Request) -> Response:
        """GET /api/definitions."""
        now = dt.datetime.now(dt.UTC)
        loaded = self.config.definitions
        documents = []
        for info in await self.config.jobs_async.definitions():
            local = loaded.get(info.name)
            documents.append(
                _data.definition_document(info, now, local.cron_timezone if local else None)
            )
        return _JSON({"definitions": documents})

    async def api_action(self, request: Request) -> Response:
        """POST /api/jobs/{job_id}/retry|cancel|delete."""
        self._require_actions()
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        job_id = self._job_id(request)
        await self._json_body(request)
        job = await self._act(action, job_id)
        logger.info("dashboard API: %s job %d", action, job_id)
        if job is None:
            return _JSON({"deleted": job_id})
        return _JSON({"job": _data.plain(job)})

    async def api_openapi(self, request: Request) -> Response:
        """GET /api/openapi.json."""
        return _JSON(_openapi.document())


def _int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {_echo(value)}") from None
    if not low <= number <= high:
        raise HTTPException(400, f"{name} must be between {low} and {high}, got {number}")
    return number


def _echo(value: str) -> str:
    """``value`` quoted for an error message: escaped by repr, and cut short."""
    shown = value if len(value) <= ECHO_CHARS_MAX else value[: ECHO_CHARS_MAX - 1] + "…"
    return repr(shown)


def _check_text(name: str, value: str) -> None:
    """Refuse (400) a filter holding a control, format or line separator character.

    No status, name, channel or number holds one: such a value is a mistake or a
    probe, and a NUL would reach PostgreSQL, which refuses it with an internal error.
    """
    index = first_unprintable(value)
    if index is not None:
        raise HTTPException(
            400,
            f"{name}: control, format and line separator characters are not allowed "
            f"(found {value[index]!r} at index {index})",
        )


def _job_ids(values: list[str]) -> list[int]:
    """The job ids of a selection, each checked; 400 for a bad one, none, or too many."""
    if len(values) > BULK_IDS_MAX:
        raise HTTPException(400, f"at most {BULK_IDS_MAX} jobs at once, got {len(values)}")
    ids = []
    for value in values:
        # ASCII digits only, as in paths; the bound keeps int() and bigint safe.
        if not re.fullmatch("[0-9]{1,19}", value) or not 1 <= int(value) <= _data.JOB_ID_MAX:
            raise HTTPException(
                400, f"id must be a job id (a positive integer), got {_echo(value)}"
            )
        ids.append(int(value))
    if not ids:
        raise HTTPException(400, "select at least one job (id)")
    return sorted(set(ids))


def _field(fields: Mapping[str, list[str]], name: str) -> str | None:
    """The first value of a form field, None when it is absent."""
    values = fields.get(name)
    return values[0] if values else None


def _definition_param(value: str) -> str:
    """A definition's name from a request; 400 unless it could be one."""
    _check_text("definition", value)
    if not value.strip():
        raise HTTPException(400, "definition is required: the name of a definition")
    if len(value) > NAME_MAX_LENGTH:
        raise HTTPException(
            400, f"definition must be at most {NAME_MAX_LENGTH} characters, got {len(value)}"
        )
    return value


def _app_path(request: Request) -> str:
    """The request's path within the app (without the root path it is mounted at)."""
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


def _is_live_path(request: Request) -> bool:
    """True for a live refresh's request (answered in JSON, errors too)."""
    return _app_path(request).startswith("/live/")


def _routes(handlers: Dashboard) -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/", handlers.overview_page, methods=["GET"], name="overview"),
        Route("/jobs", handlers.jobs_page, methods=["GET"], name="jobs"),
        Route(
            "/jobs/retry-failed",
            handlers.retry_failed_page,
            methods=["GET", "POST"],
            name="retry_failed",
        ),
        Route("/jobs/{job_id:orchestra_job_id}", handlers.job_page, methods=["GET"], name="job"),
    ]
    routes += [
        Route(
            f"/jobs/{{job_id:orchestra_job_id}}/{action}",
            handlers.confirm_page,
            methods=["GET", "POST"],
            name=f"confirm_{action}",
        )
        for action in ACTIONS
    ]
    routes += [
        Route(
            f"/jobs/bulk/{action}",
            handlers.bulk_page,
            methods=["GET", "POST"],
            name=f"bulk_{action}",
        )
        for action in ACTIONS
    ]
    routes += [
        Route(
            f"/{kind}s/{{name{':path' if kind == 'definition' else ''}}}/{verb}",
            handlers.pause_form,
            methods=["POST"],
            name=f"{verb}_{kind}",
        )
        for kind in PAUSABLE
        for verb in PAUSE_VERBS
    ]
    routes += [
        Route(
            f"/api/{kind}s/{{name{':path' if kind == 'definition' else ''}}}/{verb}",
            handlers.api_pause,
            methods=["POST"],
            name=f"api_{verb}_{kind}",
        )
        for kind in PAUSABLE
        for verb in PAUSE_VERBS
    ]
    routes += [
        Route("/definitions", handlers.definitions_page, methods=["GET"], name="definitions"),
        Route("/charts", handlers.charts_page, methods=["GET"], name="charts"),
        Route("/live/overview", handlers.live_overview, methods=["GET"], name="live_overview"),
        Route("/live/jobs", handlers.live_jobs, methods=["GET"], name="live_jobs"),
        Route("/live/charts", handlers.live_charts, methods=["GET"], name="live_charts"),
        Route(
            "/live/jobs/{job_id:orchestra_job_id}",
            handlers.live_job,
            methods=["GET"],
            name="live_job",
        ),
        Route("/api/overview", handlers.api_overview, methods=["GET"], name="api_overview"),
        Route("/api/jobs", handlers.api_jobs, methods=["GET"], name="api_jobs"),
        Route(
            "/api/jobs/retry-failed",
            handlers.api_retry_failed,
            methods=["POST"],
            name="api_retry_failed",
        ),
        Route(
            "/api/jobs/{job_id:orchestra_job_id}", handlers.api_job, methods=["GET"], name="api_job"
        ),
    ]
    routes += [
        Route(
            f"/api/jobs/{{job_id:orchestra_job_id}}/{action}",
            handlers.api_action,
            methods=["POST"],
            name=f"api_{action}",
        )
        for action in ACTIONS
    ]
    routes += [
        Route(
            f"/api/jobs/bulk/{action}",
            handlers.api_bulk,
            methods=["POST"],
            name=f"api_bulk_{action}",
        )
        for action in ACTIONS
    ]
    routes += [
        Route(
            "/api/definitions", handlers.api_definitions, methods=["GET"], name="api_definitions"
        ),
        Route("/api/charts", handlers.api_charts, methods=["GET"], name="api_charts"),
        Route("/api/openapi.json", handlers.api_openapi, methods=["GET"], name="api_openapi"),
        Mount(
            "/static", app=StaticFiles(packages=[("orchestra.dashboard", "static")]), name="static"
        ),
    ]
    return routes


def create_app(
    config: Config,
    *,
    allow_actions: bool = False,
    auth: DashboardAuth | None = None,
    secret: bytes | None = None,
) -> Starlette:
    """The dashboard of ``config``'s queue as an ASGI app (serve it with uvicorn).

    Args:
        config: the queue to show; its schema must be migrated.
        allow_actions: let people retry, cancel and delete jobs (after a
            confirmation); otherwise the buttons are hidden and POSTs get 403.
        auth: the credentials to require; None reads them from
            ``ORCHESTRA_DASHBOARD_USER``/``_PASSWORD`` (basic auth) and
            ``ORCHESTRA_DASHBOARD_TOKEN`` (bearer token); none set means no
            authentication. ``DashboardAuth()`` turns it off explicitly.
        secret: the key of the forms' CSRF tokens (random per app by default,
            so forms served before a restart are refused after it).

    The app closes the Config's async pool of its event loop on shutdown.
    """
    if auth is None:
        auth = DashboardAuth.from_env()
    handlers = Dashboard(
        config, allow_actions=allow_actions, secret=secret or secrets.token_bytes(32)
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await config.close_async()

    handle = handlers.on_error
    return Starlette(
        routes=_routes(handlers),
        middleware=[Middleware(Guard, auth=auth)],
        exception_handlers={
            HTTPException: handle,
            OrchestraError: handle,
            psycopg.Error: handle,
        },
        lifespan=lifespan,
    )
