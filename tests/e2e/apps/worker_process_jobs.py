"""Job functions for Worker(processes=N) tests: module level, so spawn children import them."""

from __future__ import annotations

import os
import signal
import time
from typing import Any


def whoami(payload: dict[str, Any]) -> dict[str, int]:
    """Return the pid of the process that ran the job, and echo the payload's n."""
    return {"pid": os.getpid(), "n": int(payload["n"])}


def crash_on_first_attempt(payload: dict[str, Any], ctx: Any) -> dict[str, int]:
    """Kill the running child with SIGKILL on attempt 1; succeed on the next."""
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


def hang(payload: dict[str, Any]) -> None:
    """Never return on its own (the attempt timeout must end it)."""
    while True:
        time.sleep(0.05)


def burn(payload: dict[str, Any]) -> int:
    """CPU-bound work: a sum that holds the GIL."""
    return sum(i * i for i in range(int(payload["n"])))
