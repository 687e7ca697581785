"""Job functions for the Worker(processes=N) tests of snooze and cancel: module level,
so that the spawned children import them. They keep their state in files named by
the payload: a child shares no memory with the test."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from orchestra import Snooze


def snooze_twice_then_succeed(payload: dict[str, Any], ctx: Any) -> dict[str, int]:
    """Snooze on the first two runs (raising, then returning ctx.snooze); then succeed."""
    runs = Path(payload["runs"])
    with runs.open("a") as out:
        out.write(f"{ctx.attempt}\n")
    done = len(runs.read_text().splitlines())
    if done == 1:
        raise Snooze(payload["seconds"])
    if done == 2:
        return ctx.snooze(payload["seconds"])  # type: ignore[no-any-return]
    return {"runs": done, "attempt": ctx.attempt, "pid": os.getpid()}


def sleep_for_ever(payload: dict[str, Any]) -> None:
    """Write the child's pid to the payload's file, then never return on its own."""
    Path(payload["pid_file"]).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)
