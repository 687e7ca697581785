"""The job definitions of the least-privilege roles test, shared by its app and the test.

The app (:mod:`tests.e2e.apps.roles_app`) registers them in the daemons; the
test defers to them through a Config logged in as the producer role. On the
default channel:

* ``echo``: returns ``{"echo": payload}``;
* ``fails``: always raises, one attempt;
* ``spawn``: defers, from the worker (which may do what a producer may), an
  ``echo`` job that depends on the job ``payload["after"]``, and returns its id;
* ``paced``: at most one running and one start per 200 ms (the guarded claim);
* ``tick``: repeated every second by the orchestrator;
* ``report``: reports progress, waits until the worker wrote it (the worker
  role's UPDATE of ``progress``), and returns the tags and meta it was given.
"""

from __future__ import annotations

import time
from typing import Any

from orchestra import Config, JobContext, JobDefinition, JobHandle

PACED_RELEASE_MS = 200
TICK_INTERVAL_MS = 1_000


def echo(payload: Any) -> dict[str, Any]:
    """Return the payload."""
    return {"echo": payload}


def fails(payload: Any) -> None:
    """Fail, every time."""
    raise RuntimeError("this job always fails")


def spawn(payload: dict[str, int], ctx: JobContext) -> int:
    """Defer an ``echo`` job depending on ``payload["after"]``; return its id."""
    follow_up = ctx.definition.config.definitions["echo"]
    return follow_up.defer({"after": payload["after"]}, depends_on=[payload["after"]]).id


def report(payload: Any, ctx: JobContext) -> dict[str, Any]:
    """Report half done; once the row shows it, report done and return tags and meta."""
    ctx.set_progress(0.5)
    handle = JobHandle(ctx.job_id, ctx.definition.config)
    deadline = time.monotonic() + 30
    while handle.progress() != 0.5:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker never wrote the progress")
        time.sleep(0.05)
    ctx.set_progress(1.0)
    return {"tags": list(ctx.tags), "meta": dict(ctx.meta)}


def tick() -> str:
    """A repeated job: nothing to do."""
    return "ticked"


def define(config: Config) -> dict[str, JobDefinition[Any]]:
    """The definitions of the app on ``config`` (same settings in every process)."""
    return {
        "echo": JobDefinition(config, name="echo", job_function=echo),
        "fails": JobDefinition(config, name="fails", job_function=fails),
        "spawn": JobDefinition(config, name="spawn", job_function=spawn),
        "report": JobDefinition(config, name="report", job_function=report),
        "paced": JobDefinition(
            config,
            name="paced",
            job_function=echo,
            release_interval_ms=PACED_RELEASE_MS,
            max_concurrency=1,
        ),
        "tick": JobDefinition(
            config, name="tick", job_function=tick, repeat_interval_ms=TICK_INTERVAL_MS
        ),
    }
