"""Daemons as real processes under the least-privilege roles of ``deploy/sql/roles.sql``.

The file is applied with psql itself to the test's schema, with group role
names of the test's own (roles are cluster-wide, tests run in parallel); an
``orchestra daemon --role worker`` and an ``orchestra daemon --role
orchestrator`` then log in as LOGIN roles that are members of the worker and
orchestrator group roles, and the test defers as a member of the producer
role: dependencies, a failing dependency, a rate-limited definition, a job
that defers a follow-up from the worker, deduplication, a repeat definition,
and results awaited by the producer. Every job must end where it should (in
the history, moved there by the worker that finished it or by the
orchestrator that failed it), and no daemon may have hit a privilege or policy
error on the way.
"""

from __future__ import annotations

import itertools
import re
import signal
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestra import Config
from orchestra.errors import JobFailed
from orchestra.testing import wait_until
from tests._roles import Roles
from tests.e2e._support import DaemonFactory, Queue
from tests.e2e.apps.roles_jobs import PACED_RELEASE_MS, define

APP = "tests.e2e.apps.roles_app:config"
ORCHESTRATOR_ARGS = (
    "--leader-lease-ms", "1500", "--repeat-interval-ms", "200",
    "--finalize-interval-ms", "200", "--rescue-interval-ms", "200",
)  # fmt: skip
#: The traceback the worker logs below the final failure of the `fails` job.
EXPECTED_TRACEBACK = re.compile(
    r"\n    Traceback \(most recent call last\):\n(?:    .*\n)*?    RuntimeError: this job always fails\n"
)
#: What a daemon logs when the roles refuse it something.
REFUSALS = (
    "permission denied",
    "row-level security",
    "DaemonDatabaseError",
    "OrchestratorServiceFailed",
    "Traceback",
)


@pytest.fixture
def admin(test_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection (the test server's own user)."""
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def roles(config: Config, admin: psycopg.Connection[Any], test_dsn: str) -> Iterator[Roles]:
    """roles.sql applied with psql to the freshly migrated schema, one LOGIN role per group."""
    roles = Roles(test_dsn, config.schema)
    config.close()  # its pool must not hold the schema when the roles are dropped
    try:
        assert roles.apply_with_psql(admin) == ""
        roles.create_logins(admin)
        yield roles
    finally:
        roles.drop(admin)


def test_daemons_run_every_kind_of_job_under_the_least_privilege_roles(
    roles: Roles,
    daemons: DaemonFactory,
    e2e_env: dict[str, str],
    admin: psycopg.Connection[Any],
) -> None:
    """Worker and orchestrator processes, each logged in as its role, run a producer's jobs."""
    queue = Queue(admin, roles.schema)
    daemons.env = {**e2e_env, "ORCHESTRA_TEST_DSN": roles.dsn("orchestrator")}
    orchestrator = daemons.start(
        role="orchestrator", app=APP, name="o", extra=ORCHESTRATOR_ARGS, wait_started=False
    )
    daemons.env = {**e2e_env, "ORCHESTRA_TEST_DSN": roles.dsn("worker")}
    worker = daemons.start(app=APP, name="w", concurrency=4)
    orchestrator.wait_for_log("OrchestratorLeadershipAcquired")

    with roles.config("producer") as producer:
        jobs = define(producer)
        first = jobs["echo"].defer({"n": 1})
        second = jobs["echo"].defer({"n": 2}, depends_on=[first])
        third = jobs["echo"].defer({"n": 3}, depends_on=[first, second])
        broken = jobs["fails"].defer({"n": 4})
        doomed = jobs["echo"].defer({"n": 5}, depends_on=[broken])
        paced = jobs["paced"].defer_many([{"n": i} for i in range(4)])
        spawner = jobs["spawn"].defer({"after": third.id})
        unique = jobs["echo"].defer({"n": 6}, unique_key="once")
        again = jobs["echo"].defer({"n": 7}, unique_key="once")
        assert again.id == unique.id and again.deduplicated
        reporter = jobs["report"].defer(None, tags=["roles"], meta={"who": "producer"})

        assert third.result(timeout=60) == {"echo": {"n": 3}}
        assert [h.result(timeout=60) for h in paced] == [{"echo": {"n": i}} for i in range(4)]
        follow_up = spawner.result(timeout=60)
        assert unique.result(timeout=60) == {"echo": {"n": 6}}
        assert reporter.result(timeout=60) == {"tags": ["roles"], "meta": {"who": "producer"}}
        assert reporter.progress() == 1.0
        with pytest.raises(JobFailed, match="this job always fails"):
            broken.result(timeout=60)
        with pytest.raises(JobFailed, match="unmet_dependencies") as failed:
            doomed.result(timeout=60)  # failed by the orchestrator's cascade
        assert failed.value.status == "failed"
        assert second.status() == "succeeded"

    # The follow-up belongs to the worker's role, which deferred it.
    wait_until(
        lambda: (
            queue.rows("SELECT status::text FROM {s}.job_history WHERE id = %s", (follow_up,))
            == [("succeeded",)]
        ),
        timeout=60,
        message="the follow-up deferred by the worker did not succeed",
    )
    assert (
        queue.value("SELECT created_by FROM {s}.job_history WHERE id = %s", (follow_up,))
        == (roles.login["worker"])
    )
    assert (
        queue.value("SELECT created_by FROM {s}.job_history WHERE id = %s", (first.id,))
        == (roles.login["producer"])
    )
    # Ended by the orchestrator (unmet dependencies): no worker of record.
    assert queue.rows(
        "SELECT status::text, worker_id FROM {s}.job_history WHERE id = %s", (doomed.id,)
    ) == [("failed", None)]
    # Rate limit: fleet-wide starts of `paced` at least the release interval apart
    # (each succeeded at its first attempt: the history row is its record).
    starts = [
        row[0]
        for row in queue.rows(
            "SELECT started_at FROM {s}.job_history WHERE definition = 'paced' ORDER BY started_at"
        )
    ]
    assert len(starts) == 4
    gaps_ms = [(b - a).total_seconds() * 1000 for a, b in itertools.pairwise(starts)]
    assert min(gaps_ms) >= PACED_RELEASE_MS, gaps_ms
    # The repeat definition: ticks enqueued by the orchestrator, run by the worker.
    wait_until(
        lambda: (
            queue.value(
                "SELECT count(*) FROM {s}.job_history"
                " WHERE definition = 'tick' AND status = 'succeeded'"
            )
            >= 2
        ),
        timeout=60,
        message="the orchestrator's ticks were not run",
    )
    registered = dict(queue.rows("SELECT role, registered_by FROM {s}.worker"))
    assert registered == {
        "worker": roles.login["worker"],
        "orchestrator": roles.login["orchestrator"],
    }

    for daemon in (worker, orchestrator):
        daemon.send(signal.SIGTERM)
    assert [worker.wait(timeout=30), orchestrator.wait(timeout=30)] == [0, 0]
    assert queue.workers() == 0  # each deleted its own row
    for daemon in (worker, orchestrator):
        # The one traceback expected: the final failure of `fails`, logged below its line.
        log = EXPECTED_TRACEBACK.sub("\n", daemon.log())
        assert not [word for word in REFUSALS if word in log], log
