"""Workers of several channels against a real PostgreSQL: what they claim, and fairness.

The fairness rule (docs/decisions/0031): higher priority first whatever the
channel; among jobs of equal priority, channels take turns within a claim (a
channel's second job only after every other channel's first), and the channel
that goes first rotates from claim to claim.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition, Worker, events
from orchestra.errors import ConfigurationError
from orchestra.testing import EventRecorder, wait_until
from tests._running import running
from tests._worker_sql import claim


def noop(payload: Any) -> None:
    """Does nothing."""


def define(config: Config, name: str, channel: str, **kwargs: Any) -> JobDefinition[Any]:
    definition = JobDefinition(
        config, name=name, job_function=noop, channel=channel, lock_interval_ms=5_000, **kwargs
    )
    with config.connection() as conn:
        definition.upsert(conn)
    return definition


def backlog(
    db: psycopg.Connection[Any],
    config: Config,
    definition: str,
    channel: str,
    count: int,
    *,
    priority: int = 0,
) -> None:
    """``count`` available jobs, deferred an hour ago, in one statement."""
    db.execute(
        f'INSERT INTO "{config.schema}".job (definition, channel, priority, payload, '
        "max_attempts, run_at) SELECT %s, %s, %s, '{}', 1, now() - interval '1 hour' "
        "FROM generate_series(1, %s)",
        [definition, channel, priority, count],
    )


def channels_of(db: psycopg.Connection[Any], config: Config, ids: list[int]) -> list[str]:
    rows = db.execute(
        f'SELECT channel FROM "{config.schema}".job WHERE id = ANY(%s) ORDER BY id', [ids]
    ).fetchall()
    return [row[0] for row in rows]


class TestOptions:
    def test_channel_and_channels_together_are_refused(self, config: Config) -> None:
        """Giving both channel= and channels= is a ConfigurationError naming channels."""
        with pytest.raises(ConfigurationError, match=r"^channels: give channel"):
            Worker(config, channel="mail", channels=["mail", "_default"])

    @pytest.mark.parametrize(
        ("channels", "problem"),
        [
            ([], "must name at least one channel"),
            (["mail", "mail"], "'mail' is given twice"),
            (["mail", "bad name"], "may only use letters"),
            ("mail", "must be a list of channel names, not str"),
            (["mail", ""], "must be a non-empty string"),
        ],
    )
    def test_bad_channel_lists_are_refused_with_one_line(
        self, config: Config, channels: Any, problem: str
    ) -> None:
        """An empty list, a duplicate, a bad name or a bare string: one line naming it."""
        with pytest.raises(ConfigurationError) as raised:
            Worker(config, channels=channels)
        message = str(raised.value)
        assert message.startswith("channels: ") and problem in message
        assert "\n" not in message

    def test_one_channel_still_works_and_is_the_default(self, config: Config) -> None:
        """channel= serves one channel; neither argument serves _default."""
        assert Worker(config, channel="mail").channels == ("mail",)
        assert Worker(config).channels == ("_default",)
        both = Worker(config, channels=["mail", "_default"])
        assert both.channels == ("mail", "_default") and both.channel == "mail"


class TestClaimingSeveralChannels:
    def test_a_worker_runs_the_jobs_of_each_of_its_channels_and_of_no_other(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """Jobs of both channels run; a third channel's job stays available."""
        mail = define(config, "mail", "mail").defer({})
        report = define(config, "report", "reports").defer({})
        other = define(config, "other", "other").defer({})
        worker = Worker(
            config, channels=["mail", "reports"], event_handler=recorder, process_interval_ms=50
        )
        with running(worker):
            done = recorder.wait_for(events.WorkerJobSucceeded, count=2)
            wait_until(lambda: worker.stats.claim_queries >= 5)
        assert sorted(e.job_id for e in done) == sorted([mail.id, report.id])
        assert config.jobs.get(other.id).status == "available"

    def test_the_worker_row_lists_its_channels(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The worker table holds every channel, in order; `channel` keeps the first."""
        worker = Worker(config, channels=["mail", "_default"], process_interval_ms=50)
        with running(worker):
            wait_until(lambda: worker.worker_id is not None)
            row = db.execute(
                f'SELECT channel, channels FROM "{config.schema}".worker WHERE id = %s',
                [worker.worker_id],
            ).fetchone()
        assert row == ("mail", ["mail", "_default"])

    def test_a_notification_of_any_of_its_channels_wakes_the_worker(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """A defer on the second channel wakes an idle worker long before its poll."""
        definition = define(config, "late", "reports")
        worker = Worker(
            config,
            channels=["mail", "reports"],
            event_handler=recorder,
            process_interval_ms=120_000,
        )
        with running(worker):
            wait_until(lambda: worker._listener is not None and worker._listener.connected.is_set())
            wait_until(lambda: worker.stats.claim_queries >= 1)  # its start-up claim found nothing
            definition.defer({})
            # Far sooner than the two-minute poll: only the notification can have woken it.
            recorder.wait_for(events.WorkerJobSucceeded, timeout=20)


class TestFairness:
    def test_a_backlog_does_not_hold_back_another_channels_job_of_the_same_priority(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """10,000 old jobs in one channel, one new job in another: the first claim takes it."""
        define(config, "bulk", "bulk")
        quiet = define(config, "quiet", "quiet")
        backlog(db, config, "bulk", "bulk", 10_000)
        new = quiet.defer({})
        claimed = [row[0] for row in claim(db, config, channels=["bulk", "quiet"], limit=10)]
        assert len(claimed) == 10
        assert new.id in claimed

    def test_a_claim_takes_turns_between_channels(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """With both channels busy, a claim of 10 takes 5 of each, the oldest of each."""
        define(config, "a", "a")
        define(config, "b", "b")
        backlog(db, config, "a", "a", 1_000)
        backlog(db, config, "b", "b", 1_000)
        claimed = [row[0] for row in claim(db, config, channels=["a", "b"], limit=10)]
        assert sorted(channels_of(db, config, claimed)) == ["a"] * 5 + ["b"] * 5
        oldest_b = db.execute(
            f"SELECT min(id) FROM \"{config.schema}\".job WHERE channel = 'b'"
        ).fetchone()
        assert oldest_b is not None and oldest_b[0] in claimed

    def test_claims_of_one_job_alternate_as_the_first_channel_rotates(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A claim of one job takes the head of the channel listed first: the worker
        rotates the list, so a backlog cannot keep the other channel waiting."""
        define(config, "a", "a")
        define(config, "b", "b")
        backlog(db, config, "a", "a", 100)
        backlog(db, config, "b", "b", 100)
        first = claim(db, config, channels=["a", "b"], limit=1)
        second = claim(db, config, channels=["b", "a"], limit=1)
        assert channels_of(db, config, [first[0][0], second[0][0]]) == ["a", "b"]

    def test_a_higher_priority_goes_first_whatever_its_channel(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Priority is global across the worker's channels; turns are among equals."""
        define(config, "a", "a")
        define(config, "b", "b")
        backlog(db, config, "a", "a", 50, priority=0)
        backlog(db, config, "b", "b", 3, priority=5)
        claimed = [row[0] for row in claim(db, config, channels=["a", "b"], limit=4)]
        assert sorted(channels_of(db, config, claimed)) == ["a", "b", "b", "b"]

    def test_a_claim_is_full_while_any_channel_has_jobs(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """An empty channel gives its share to the others: a short claim means drained."""
        define(config, "b", "b")
        backlog(db, config, "b", "b", 100)
        assert len(claim(db, config, channels=["a", "b", "c"], limit=50)) == 50

    def test_a_concurrency_one_worker_serves_a_quiet_channel_between_backlog_jobs(
        self, config: Config, recorder: EventRecorder, db: psycopg.Connection[Any]
    ) -> None:
        """One slot, 30 old jobs in one channel and a new one in another: the new job
        runs second, not after the backlog."""
        define(config, "bulk", "bulk")
        quiet = define(config, "quiet", "quiet")
        backlog(db, config, "bulk", "bulk", 30)
        new = quiet.defer({})
        worker = Worker(
            config,
            channels=["bulk", "quiet"],
            concurrency=1,
            event_handler=recorder,
            process_interval_ms=50,
        )
        with running(worker):
            done = recorder.wait_for(events.WorkerJobSucceeded, count=3, timeout=20)
        assert new.id in [e.job_id for e in done[:2]]


class TestResourceKeysAcrossChannels:
    def test_heads_of_one_key_in_two_channels_are_not_claimed_together(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Each channel has a head of key k: one claim takes one of them, and the
        running-key index is never hit (it would refuse the whole claim every time)."""
        a = define(config, "a", "a")
        b = define(config, "b", "b")
        first = a.defer({}, resource_key="k")
        second = b.defer({}, resource_key="k")
        claimed = [row[0] for row in claim(db, config, channels=["a", "b"], limit=10)]
        assert claimed == [first.id]
        assert claim(db, config, channels=["a", "b"], limit=10, worker_id=2) == []
        assert config.jobs.get(second.id).status == "available"

    def test_limited_definitions_of_two_channels_sharing_a_key_both_run(
        self, config: Config, recorder: EventRecorder
    ) -> None:
        """The guarded claim too takes one head per key across the worker's channels."""
        a = define(config, "a", "a", max_concurrency=5)
        b = define(config, "b", "b", max_concurrency=5)
        handles = [a.defer({}, resource_key="k"), b.defer({}, resource_key="k")]
        worker = Worker(config, channels=["a", "b"], event_handler=recorder, process_interval_ms=50)
        with running(worker):
            done = recorder.wait_for(events.WorkerJobSucceeded, count=2, timeout=20)
        assert sorted(e.job_id for e in done) == sorted(h.id for h in handles)
        assert not [
            e for e in recorder.of_type(events.DaemonDatabaseError) if e.operation == "claim"
        ]
