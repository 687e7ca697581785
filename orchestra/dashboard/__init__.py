"""The web dashboard (extra ``dashboard``): ``orchestra dashboard`` or :func:`create_app`.

Server-rendered pages (overview, jobs with search, one job, charts,
definitions) that refresh themselves, with retry, cancel and delete (of one
job, a selection, or every failed job of a definition) behind a confirmation
step when ``allow_actions`` is set, and a JSON API under ``/api`` described by
``/api/openapi.json``. Every asset ships in this package: no CDN.

    from orchestra.dashboard import create_app
    app = create_app(config, allow_actions=False)     # any ASGI server; uvicorn here
"""

from __future__ import annotations

try:
    import jinja2 as _jinja2  # noqa: F401
    import starlette as _starlette  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover (the extra is installed in tests)
    raise ModuleNotFoundError(
        f"orchestra.dashboard needs the 'dashboard' extra ({exc.name} is missing): "
        "pip install 'orchestra-queue[dashboard]'",
        name=exc.name,
    ) from exc

from orchestra.dashboard._app import create_app
from orchestra.dashboard._auth import DashboardAuth

__all__ = ["DashboardAuth", "create_app"]
