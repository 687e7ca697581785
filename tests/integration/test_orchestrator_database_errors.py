"""An orchestrator that loses its connections reports it as a worker does, and carries on."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from orchestra import Config, Orchestrator, events
from orchestra._orchestrator._orchestrator import FAILED_PASS_RETRY_S
from orchestra.testing import EventRecorder, wait_until

#: Every maintenance service waits this long after its first pass: only the
#: election meets the terminated connections.
HOUR_MS = 3_600_000
LEASE_MS = 2_000
PASS_MS = 50


def terminate(db: psycopg.Connection[Any], application_name: str) -> int:
    """Terminate the server processes of ``application_name``; how many there were."""
    row = db.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_an_orchestrator_whose_connections_die_emits_daemon_database_errors_and_leads_again(
    test_dsn: str, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
) -> None:
    """Each failed election is a DaemonDatabaseError (operation ``election``), paced by the lease.

    A follower has no other event to tell that it lost the database; a
    leader's DaemonDatabaseError comes with its OrchestratorLeadershipLost.
    """
    application_name = f"orchestra-orch-{uuid.uuid4().hex[:8]}"
    own = Config(make_conninfo(test_dsn, application_name=application_name), schema=config.schema)
    orchestrator = Orchestrator(
        own,
        name="loses",
        event_handler=recorder,
        leader_lease_ms=LEASE_MS,
        repeat_interval_ms=HOUR_MS,
        heartbeat_interval_ms=HOUR_MS,
        clean_interval_ms=HOUR_MS,
        rescue_interval_ms=HOUR_MS,
        finalize_interval_ms=HOUR_MS,
        gauges_interval_ms=HOUR_MS,
    )
    orchestrator.start()
    try:
        recorder.wait_for(events.OrchestratorLeadershipAcquired)
        wait_until(lambda: all(n >= 1 for n in orchestrator.passes.values()))
        assert recorder.of_type(events.DaemonDatabaseError) == []
        assert terminate(db, application_name) >= 1
        errors = recorder.wait_for(events.DaemonDatabaseError, timeout=30)
        # It leads again on a new connection, without a restart.
        wait_until(
            lambda: len(recorder.of_type(events.OrchestratorLeadershipAcquired)) >= 2,
            timeout=30,
            message="the orchestrator did not lead again after its connections died",
        )
    finally:
        orchestrator.stop()
        orchestrator.join(timeout=30)
        own.close()
    first = errors[0]
    assert (first.operation, first.retry_in_ms) == ("election", LEASE_MS // 4)
    assert (first.daemon_id, first.role) == (orchestrator.daemon_id, "orchestrator")
    assert "terminating connection" in first.error
    lost = recorder.of_type(events.OrchestratorLeadershipLost)
    assert lost and lost[0].timestamp >= first.timestamp


def test_a_pass_that_fails_on_the_database_is_a_daemon_database_error_too(
    test_dsn: str, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
) -> None:
    """A leader whose pass meets a dead connection reports both events, and retries the pass."""
    application_name = f"orchestra-orch-{uuid.uuid4().hex[:8]}"
    own = Config(make_conninfo(test_dsn, application_name=application_name), schema=config.schema)
    orchestrator = Orchestrator(
        own,
        name="pass",
        event_handler=recorder,
        # The election waits longer than the pass: the pass meets the dead connection.
        leader_lease_ms=HOUR_MS,
        repeat_interval_ms=HOUR_MS,
        heartbeat_interval_ms=HOUR_MS,
        clean_interval_ms=HOUR_MS,
        rescue_interval_ms=HOUR_MS,
        finalize_interval_ms=HOUR_MS,
        # The gauges read the database at every pass, whatever the queue holds.
        gauges_interval_ms=PASS_MS,
    )
    orchestrator.start()
    try:
        recorder.wait_for(events.OrchestratorLeadershipAcquired)
        wait_until(lambda: all(n >= 1 for n in orchestrator.passes.values()))
        assert terminate(db, application_name) >= 1
        failed = recorder.wait_for(events.OrchestratorServiceFailed, timeout=30)[0]
        errors = recorder.wait_for(events.DaemonDatabaseError, timeout=30)
        passes = orchestrator.passes["gauges"]
        wait_until(lambda: orchestrator.passes["gauges"] > passes, timeout=30)
    finally:
        orchestrator.stop()
        orchestrator.join(timeout=30)
        own.close()
    assert failed.service == "gauges"
    assert (errors[0].operation, errors[0].error) == ("gauges", failed.error)
    assert errors[0].retry_in_ms == min(round(FAILED_PASS_RETRY_S * 1000), PASS_MS)
