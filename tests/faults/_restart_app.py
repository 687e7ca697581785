"""The app of the claim-durability case: ``--app tests.faults._restart_app:app``.

It reads ``ORCHESTRA_TEST_DSN`` and ``E2E_SCHEMA`` (as every fault app) and
``RESTART_EXECS_DIR``, and registers one definition, ``held``, whose function
touches no database: it creates a file named after its process and attempt in
that directory when it starts, then waits until a file named ``release``
appears there. So while it runs, nothing but the claim's own commit can have
made the claim durable, and what really ran is counted outside the database
the case crashes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from orchestra import Config, JobContext, JobDefinition

EXECS_ENV = "RESTART_EXECS_DIR"
RELEASE = "release"
#: Long, so that no heartbeat (a third of it) writes while the case crashes the server.
LOCK_INTERVAL_MS = 60_000
POLL_S = 0.02


def held(payload: dict[str, Any] | None, ctx: JobContext) -> dict[str, Any]:
    """Note the execution in ``$RESTART_EXECS_DIR``, wait for ``release`` there, return."""
    folder = Path(os.environ[EXECS_ENV])
    (folder / f"run-{ctx.job_id}-{ctx.attempt}-{os.getpid()}").touch()
    while not (folder / RELEASE).exists():
        time.sleep(POLL_S)
    return {"job_id": ctx.job_id, "attempt": ctx.attempt, "pid": os.getpid()}


def define(config: Config) -> JobDefinition[Any]:
    """Register ``held`` on ``config``: the same in the app and in the test."""
    return JobDefinition(
        config, name="held", job_function=held, lock_interval_ms=LOCK_INTERVAL_MS, num_attempts=5
    )


def app() -> Config:
    """The app's Config, built when the daemon loads it (importing this module builds none)."""
    built = Config(os.environ["ORCHESTRA_TEST_DSN"], schema=os.environ["E2E_SCHEMA"])
    define(built)
    return built
