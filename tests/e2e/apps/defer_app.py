"""The e2e app of ``orchestra defer``: ``--app tests.e2e.apps.defer_app:config``.

It reads ``ORCHESTRA_TEST_DSN`` and ``E2E_SCHEMA`` from the environment, as
the other e2e apps do, and registers:

* ``greet``: a typed payload (:class:`Greeting`, an attrs class), priority 3;
  returns the greeting;
* ``echo``: plain JSON; returns its payload;
* ``refuse``: always fails with ``ValueError: refused <payload>``.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from orchestra import Config, JobDefinition


@attrs.frozen
class Greeting:
    """The payload of ``greet``."""

    name: str
    times: int = 1


def greet(payload: Greeting) -> dict[str, str]:
    """Greet ``payload.name`` ``payload.times`` times."""
    return {"text": " ".join([f"hello {payload.name}"] * payload.times)}


def echo(payload: Any) -> Any:
    """Return the payload as the job's result."""
    return payload


def refuse(payload: Any) -> None:
    """Fail every attempt."""
    raise ValueError(f"refused {payload!r}")


config = Config(os.environ["ORCHESTRA_TEST_DSN"], schema=os.environ["E2E_SCHEMA"])
definitions = {
    "greet": JobDefinition(
        config, name="greet", job_function=greet, payload_type=Greeting, priority=3
    ),
    "echo": JobDefinition(config, name="echo", job_function=echo),
    "refuse": JobDefinition(config, name="refuse", job_function=refuse),
}
