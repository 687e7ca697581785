"""Job functions that report progress, importable by a worker's child processes.

A child cannot share a ``threading.Event`` with the test: a job waits for a
file the test creates (its path is in the payload), with a deadline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

#: How long a job waits for the test's go-ahead file before it fails.
GO_TIMEOUT_S = 60.0


def report_then_wait_for_file(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Report half done, wait for ``payload["go"]`` to exist, report done; return what it read."""
    ctx.set_progress({"done": 1, "total": 2})
    deadline = time.monotonic() + GO_TIMEOUT_S
    while not Path(payload["go"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never created the go-ahead file")
        time.sleep(0.02)
    ctx.set_progress({"done": 2, "total": 2})
    return {"tags": list(ctx.tags), "meta": dict(ctx.meta)}


def report_in_a_tight_loop(payload: dict[str, Any], ctx: Any) -> int:
    """Report ``payload["n"]`` values as fast as it can, for at least ``payload["s"]`` seconds."""
    reported = 0
    start = time.monotonic()
    while reported < payload["n"] or time.monotonic() - start < payload["s"]:
        reported += 1
        ctx.set_progress(min(1.0, reported / payload["n"]))
    ctx.set_progress(1.0)
    return reported
