"""Testing an application's jobs with pytest: what was deferred, drain, inline.

Run: pytest examples/signup_tests.py -p orchestra.pytest_plugin
(installed, orchestra's pytest plugin loads by itself; -p loads it from a checkout).

The top half stands for the application (myapp/jobs.py), the bottom half for its
tests; in a project the orchestra_config fixture lives in conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import attrs
import pytest
from psycopg import sql

from orchestra import Config, JobContext, JobDefinition, JobFailed, JobHandle
from orchestra.testing import DrainResult, Inline, assert_deferred, assert_not_deferred

# -- the application --------------------------------------------------------------------

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_signup"))
#: Stands for the mail service: what the job sent.
outbox: list[str] = []


@attrs.frozen
class Welcome:
    email: str


def send_welcome(welcome: Welcome, ctx: JobContext) -> dict[str, str]:
    if welcome.email.endswith("@bounce.example"):
        raise ConnectionError(f"mailbox of {welcome.email} unavailable")
    outbox.append(welcome.email)
    return {"sent_to": welcome.email, "attempt": str(ctx.attempt)}


welcome = JobDefinition(
    config, name="send-welcome", job_function=send_welcome, payload_type=Welcome, num_attempts=3
)


def sign_up(email: str) -> JobHandle:
    """The code under test: it stores the user (not shown) and defers the welcome mail."""
    return welcome.defer(Welcome(email))


# -- its tests ----------------------------------------------------------------------------


@pytest.fixture
def orchestra_config() -> Iterator[Config]:
    """The application's Config, on an empty queue for every test."""
    config.prepare_schema()
    outbox.clear()
    yield config
    with config.connection() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(config.schema)))
    config.close()


def test_sign_up_defers_a_welcome_mail(orchestra_config: Config) -> None:
    sign_up("ada@example.com")
    assert_deferred(orchestra_config, welcome, Welcome("ada@example.com"), count=1)
    assert_not_deferred(orchestra_config, welcome, Welcome("bob@example.com"))
    assert outbox == []  # deferred, not sent


def test_the_welcome_mail_is_sent(orchestra_drain: Callable[..., DrainResult]) -> None:
    handle = sign_up("ada@example.com")
    assert orchestra_drain() == DrainResult(succeeded=1)
    assert outbox == ["ada@example.com"]
    assert handle.result(timeout=0) == {"sent_to": "ada@example.com", "attempt": "1"}


def test_a_bounce_is_retried_then_given_up(orchestra_drain: Callable[..., DrainResult]) -> None:
    handle = sign_up("eve@bounce.example")
    # Retries wait for their backoff; with_scheduled runs them at once.
    assert orchestra_drain() == DrainResult(retried=1, scheduled=1)
    result = orchestra_drain(with_scheduled=True)
    assert result == DrainResult(retried=1, failed=1)
    with pytest.raises(JobFailed, match=r"mailbox of eve@bounce\.example unavailable"):
        handle.result(timeout=0)


def test_inline_sends_before_sign_up_returns(orchestra_inline: Inline) -> None:
    handle = sign_up("ada@example.com")
    assert outbox == ["ada@example.com"]
    assert handle.result(timeout=0)["sent_to"] == "ada@example.com"
    assert [attempt.status for attempt in orchestra_inline.attempts] == ["succeeded"]
