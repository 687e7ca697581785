"""orchestra.testing's checks of what was deferred, without running it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs
import pytest

from orchestra import Config, JobDefinition
from orchestra.errors import ConfigurationError
from orchestra.testing import assert_deferred, assert_not_deferred, deferred_jobs, drain


@attrs.frozen
class Invite:
    email: str
    sent_at: dt.date


def test_assert_deferred_matches_the_payload_as_defer_encodes_it(config: Config) -> None:
    """An attrs payload is compared with the stored JSON after the same conversion as defer."""
    invite = JobDefinition(config, name="invite", job_function=lambda p: None, payload_type=Invite)
    invite.defer(Invite("ada@example.com", dt.date(2026, 1, 2)))
    invite.defer(Invite("bob@example.com", dt.date(2026, 1, 2)))

    (job,) = assert_deferred(config, invite, Invite("ada@example.com", dt.date(2026, 1, 2)))
    assert job.payload == {"email": "ada@example.com", "sent_at": "2026-01-02"}
    assert len(assert_deferred(config, "invite", count=2)) == 2
    assert_not_deferred(config, invite, Invite("eve@example.com", dt.date(2026, 1, 2)))


def test_a_missing_job_fails_with_what_the_queue_holds(config: Config) -> None:
    """The AssertionError says what was looked for and lists the payloads found."""
    mail = JobDefinition(config, name="mail", job_function=lambda p: None)
    mail.defer({"to": "ada"})
    with pytest.raises(AssertionError) as raised:
        assert_deferred(config, mail, {"to": "bob"})
    message = str(raised.value)
    assert 'expected at least 1 job(s) of \'mail\' with payload {"to": "bob"}' in message
    assert 'found 0; its jobs in the queue have the payloads {"to": "ada"}' in message
    with pytest.raises(AssertionError, match="expected 2 job"):
        assert_deferred(config, mail, count=2)
    with pytest.raises(AssertionError, match="expected no job of 'mail'"):
        assert_not_deferred(config, mail)


def test_only_jobs_not_run_yet_count(config: Config) -> None:
    """A job that ran is no longer deferred; deferred_jobs lists the rest, oldest first."""
    task = JobDefinition(config, name="task", job_function=lambda p: None)
    task.defer({"n": 1})
    drain(config)
    assert_not_deferred(config, task)
    second = task.defer({"n": 2})
    third = task.defer({"n": 3}, depends_on=[second])
    assert [job.id for job in deferred_jobs(config, task)] == [second.id, third.id]
    assert [job.status for job in deferred_jobs(config)] == ["available", "waiting"]
    assert [job.id for job in deferred_jobs(config, status="succeeded")] == [1]


def test_where_selects_jobs_by_any_stored_field(config: Config) -> None:
    """where receives each Job: priority, run_at, dependencies ... can be checked."""
    task = JobDefinition(config, name="task", job_function=lambda p: None)
    task.defer({"n": 1})
    task.defer({"n": 2}, priority=50, delay_ms=60_000)

    def urgent(job: Any) -> bool:
        return bool(job.priority == 50)

    (job,) = assert_deferred(config, task, where=urgent)
    assert job.payload == {"n": 2}
    assert_deferred(config, task, {"n": 1}, count=1, where=lambda job: job.priority == 0)
    assert_not_deferred(config, task, {"n": 1}, where=urgent)


def test_a_definition_of_another_process_is_checked_by_name(config: Config) -> None:
    """A name this Config does not carry compares plain JSON payloads."""
    with Config(config.dsn, schema=config.schema) as producer:
        JobDefinition(producer, name="remote", job_function=lambda p: None).defer({"a": [1, 2]})
    assert_deferred(config, "remote", {"a": [1, 2]}, count=1)


def test_bad_arguments_are_refused(config: Config) -> None:
    """A bad count, where or definition raises ConfigurationError naming it."""
    task = JobDefinition(config, name="task", job_function=lambda p: None)
    with pytest.raises(ConfigurationError, match=r"^count: "):
        assert_deferred(config, task, count=-1)
    with pytest.raises(ConfigurationError, match=r"^where: "):
        assert_deferred(config, task, where="priority > 0")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"^definition: "):
        assert_deferred(config, 42)  # type: ignore[arg-type]
