"""Helpers shared by the unit tests: an unreachable Config and a guard against connecting."""

from __future__ import annotations

from typing import Any

from orchestra import Config, JobDefinition

#: Never reached: the unit tests fail loudly (ConnectionAttemptedError) before any socket opens.
UNREACHABLE_DSN = "postgresql://nobody@127.0.0.1:1/none"
SECRET = "s3cr3t-XYZ"
SECRET_URI = f"postgresql://u:{SECRET}@127.0.0.1:1/db"


class ConnectionAttemptedError(AssertionError):
    """Raised instead of opening a connection: unit tests must never reach PostgreSQL."""


def refuse_connection(*args: object, **kwargs: object) -> Any:
    """Stand-in for psycopg's connect functions."""
    raise ConnectionAttemptedError(f"a unit test tried to connect: {args!r}")


def noop(payload: object, ctx: object) -> None:
    """A job function that does nothing."""


def define(config: Config, **overrides: Any) -> JobDefinition[Any]:
    """A JobDefinition named ``job`` with a no-op function, with ``overrides`` applied."""
    arguments: dict[str, Any] = {"name": "job", "job_function": noop}
    arguments.update(overrides)
    return JobDefinition(config, **arguments)
