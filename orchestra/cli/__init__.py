"""The ``orchestra`` command.

Exit codes: 0 success, 1 runtime error (database down, schema not ready, a
crash), 2 usage error (bad option, --app that does not import). Errors are one
readable line, never a traceback, and never show a password.

One module per command or command group; importing them registers them on
:data:`main`.
"""

from __future__ import annotations

from orchestra.cli import _bench, _daemons, _dashboard, _defer, _health, _jobs, _pause
from orchestra.cli._app import configure_logging, handle_errors, load_app, main

__all__ = ["configure_logging", "handle_errors", "load_app", "main"]

# Referenced so that linters keep the imports that register the commands.
_COMMANDS = (_bench, _daemons, _dashboard, _defer, _health, _jobs, _pause)
