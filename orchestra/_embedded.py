"""The embedded PostgreSQL default (extra ``embedded``, package ``pgserver``).

Without a DSN, orchestra starts a private PostgreSQL whose data lives under
``$ORCHESTRA_HOME/pgdata`` (default ``~/.local/share/orchestra``). pgserver
counts the processes that use one data directory and stops the server when the
last of them exits, so a producer, a worker and the CLI can share it.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from orchestra.errors import EmbeddedServerError

HOME_ENV = "ORCHESTRA_HOME"
_lock = threading.Lock()
_servers: dict[Path, Any] = {}


def orchestra_home() -> Path:
    """The directory that holds orchestra's local state."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path("~/.local/share/orchestra").expanduser()


#: What platformdirs says (a RuntimeDirWarning) when pgserver asks it for a
#: runtime directory and XDG_RUNTIME_DIR is unset, as on most servers, in
#: containers and under sudo. pgserver then uses a private directory in /tmp,
#: which is fine: the warning would only repeat on every command.
_UNSET_RUNTIME_DIR = r"XDG_RUNTIME_DIR is not set"


def _import_pgserver() -> Any:
    """``import pgserver``, without the runtime-directory warning that importing it gives."""
    try:
        from platformdirs import RuntimeDirWarning  # noqa: PLC0415  (pgserver's dependency)

        category: type[Warning] = RuntimeDirWarning
    except ImportError:  # an older platformdirs, without a category of its own for it
        category = UserWarning
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=_UNSET_RUNTIME_DIR, category=category, module="platformdirs"
        )
        import pgserver  # noqa: PLC0415  (optional extra, imported on demand)
    return pgserver


def embedded_dsn(*, announce: bool = True) -> str:
    """Start (or join) the embedded server and return its DSN."""
    data_dir = orchestra_home() / "pgdata"
    with _lock:
        server = _servers.get(data_dir)
        if server is None:
            try:
                import fasteners  # type: ignore[import-untyped]  # noqa: PLC0415  (pgserver's)

                pgserver = _import_pgserver()
            except ImportError as exc:
                raise EmbeddedServerError(
                    "no DSN given (argument, ORCHESTRA_DSN) and the embedded PostgreSQL is "
                    "not installed: pip install 'orchestra-queue[embedded]', or set ORCHESTRA_DSN"
                ) from exc
            data_dir.mkdir(parents=True, exist_ok=True)
            # Processes starting at once (pytest-xdist workers, a worker and
            # the CLI) must not both run initdb on a new directory: the second
            # fails once the first has handed it to the server's user.
            startup = fasteners.InterProcessLock(str(data_dir.parent / "pgdata.startup.lock"))
            try:
                with startup:
                    server = pgserver.get_server(data_dir, cleanup_mode="stop")
            except Exception as exc:
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL in {data_dir} did not start: {exc}"
                ) from exc
            _servers[data_dir] = server
            if announce:
                print(f"orchestra: using the embedded PostgreSQL in {data_dir}", file=sys.stderr)  # noqa: T201
    uri: str = server.get_uri()
    return uri
