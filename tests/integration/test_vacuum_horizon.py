"""What holds back vacuum, as `orchestra health`, the dashboard and the metrics show it.

A second session in REPEATABLE READ that took a snapshot holds back the
cleanup of every row that dies after it. The server is shared with other
tests, so a check first waits (with a deadline) until that session is the
oldest holder the server reports; a threshold of 0 s stands in for a
transaction that has been open for minutes.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import psycopg
import pytest
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry
from psycopg import conninfo, sql
from starlette.testclient import TestClient

from orchestra import Config, JobDefinition, events
from orchestra._orchestrator._gauges import (
    MONITOR_HINT,
    QueueGauges,
    VacuumHorizon,
    read_vacuum_horizon,
)
from orchestra.cli import main
from orchestra.dashboard import _data, create_app
from orchestra.metrics import PrometheusHandler
from orchestra.testing import wait_until

APPLICATION = "vacuum-horizon-holder"


@attrs.frozen
class Holder:
    """A session idle in a REPEATABLE READ transaction that took its snapshot."""

    conn: psycopg.Connection[Any]
    pid: int


@pytest.fixture
def holder(test_dsn: str) -> Iterator[Holder]:
    """Open the transaction; roll it back (if the test did not end it) and close."""
    conn = psycopg.connect(test_dsn, application_name=APPLICATION)
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT 1")  # the snapshot is taken by the first statement
        yield Holder(conn, conn.info.backend_pid)
    finally:
        conn.rollback()
        conn.close()


def horizon(conn: psycopg.Connection[Any], config: Config) -> VacuumHorizon:
    """Read what holds back vacuum, as the orchestrator reads it."""
    return read_vacuum_horizon(conn, config)


def oldest_pid(conn: psycopg.Connection[Any], config: Config) -> int | None:
    """The pid of the oldest holder the server reports now."""
    oldest = horizon(conn, config).oldest
    return None if oldest is None else oldest.pid


def wait_until_oldest(conn: psycopg.Connection[Any], config: Config, pid: int) -> None:
    """Wait until ``pid`` holds the oldest snapshot (other tests' snapshots end soon)."""
    wait_until(
        lambda: oldest_pid(conn, config) == pid,
        timeout=60,
        message=f"session {pid} did not become the oldest snapshot holder",
    )


def naming(pid: int, read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Poll ``read`` until the oldest transaction in its document is ``pid``'s; return it."""

    def attempt() -> dict[str, Any] | None:
        document = read()
        oldest = document["oldest_transaction"]
        return document if oldest is not None and oldest["pid"] == pid else None

    found: dict[str, Any] = wait_until(
        attempt, timeout=60, interval=0.1, message=f"session {pid} was never reported oldest"
    )
    return found


def health(*args: str) -> Result:
    """Run `orchestra health` in this process."""
    return CliRunner().invoke(main, ["health", *args], catch_exceptions=False)


def health_json(config: Config, *args: str) -> dict[str, Any]:
    """The JSON document of `orchestra health --json` on the test schema (which exits 0)."""
    result = health("--dsn", config.dsn, "--schema", config.schema, "--json", *args)
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def stats_flushed(conn: psycopg.Connection[Any]) -> None:
    """Ask this session to publish its table statistics at its next idle moment (PostgreSQL 15+)."""
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")


class TestHealth:
    def test_a_transaction_older_than_the_threshold_makes_health_degraded_and_names_it(
        self, config: Config, db: psycopg.Connection[Any], holder: Holder
    ) -> None:
        """The oldest transaction's pid, state and application are reported and warned about, never its query; exit 0, or 3 with --fail-on-warning."""
        document = naming(holder.pid, lambda: health_json(config, "--max-transaction-age-s", "0"))
        assert document["healthy"] is True and document["status"] == "degraded"
        oldest = document["oldest_transaction"]
        assert oldest["kind"] == "session"
        assert oldest["state"] == "idle in transaction"
        assert oldest["application_name"] == APPLICATION
        assert oldest["age_s"] >= 0 and oldest["hidden"] is False
        assert f"pid {holder.pid}" in document["warnings"][0]
        assert APPLICATION in document["warnings"][0]
        assert "query" not in oldest
        assert "SELECT 1" not in json.dumps(document)

        result = health(
            "--dsn",
            config.dsn,
            "--schema",
            config.schema,
            "--max-transaction-age-s",
            "0",
            "--fail-on-warning",
        )
        assert result.exit_code == 3
        assert result.stdout.startswith("degraded: PostgreSQL answered")
        assert "warning:" in result.stderr and "autovacuum cannot remove" in result.stderr

        # Under the default threshold (5 minutes) a fresh transaction is no warning.
        document = health_json(config)
        assert document["max_transaction_age_s"] == 300
        assert not any(f"pid {holder.pid}" in w for w in document["warnings"])

    def test_the_transaction_is_gone_from_health_after_commit(
        self, config: Config, db: psycopg.Connection[Any], holder: Holder
    ) -> None:
        """Once the holder commits, health no longer names it."""
        naming(holder.pid, lambda: health_json(config, "--max-transaction-age-s", "0"))
        holder.conn.commit()
        document = health_json(config, "--max-transaction-age-s", "0")
        oldest = document["oldest_transaction"]
        assert oldest is None or oldest["pid"] != holder.pid
        assert not any(f"pid {holder.pid}" in w for w in document["warnings"])

    def test_health_reports_the_job_table_rows_and_dead_rows_grow_after_updates(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Live rows of the job table are counted, and updating jobs adds dead rows."""
        # Autovacuum off for this schema's job table: it would reset the figure meanwhile.
        db.execute(
            sql.SQL("ALTER TABLE {}.job SET (autovacuum_enabled = false)").format(
                sql.Identifier(config.schema)
            )
        )
        send = JobDefinition(config, name="send", job_function=lambda: None)
        with config.connect() as conn:
            send.defer_many([{"n": n} for n in range(20)], conn=conn)
            stats_flushed(conn)

        def job_table() -> dict[str, Any]:
            table: dict[str, Any] = health_json(config)["job_table"]
            return table

        wait_until(
            lambda: (job_table()["live_tuples"] or 0) >= 20,
            timeout=60,
            message="the job table's statistics did not show the new rows",
        )
        before = job_table()["dead_tuples"] or 0
        db.execute(sql.SQL("UPDATE {}.job SET priority = 1").format(sql.Identifier(config.schema)))
        stats_flushed(db)
        wait_until(
            lambda: (job_table()["dead_tuples"] or 0) >= before + 20,
            timeout=60,
            message="updating 20 jobs did not add 20 dead rows",
        )
        dead = horizon(db, config).job_dead_tuples
        assert dead is not None and dead >= before + 20

        # A vacuum's time is reported too, as ISO 8601 in the JSON document.
        db.execute(sql.SQL("VACUUM {}.job").format(sql.Identifier(config.schema)))
        vacuumed = wait_until(
            lambda: job_table()["last_vacuum"],
            timeout=60,
            message="the job table's statistics did not show the vacuum",
        )
        assert dt.datetime.fromisoformat(vacuumed).tzinfo is not None


class TestDashboard:
    def test_overview_shows_the_oldest_transaction_and_a_banner_past_the_threshold(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        holder: Holder,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The overview API and page name the oldest transaction's pid; past the threshold the page shows a warning banner."""
        with TestClient(create_app(config)) as client:
            database = naming(holder.pid, lambda: client.get("/api/overview").json()["database"])
            assert database["transaction_warning_s"] == 300
            oldest = database["oldest_transaction"]
            assert oldest["age_s"] >= 0
            assert oldest["application_name"] == APPLICATION
            assert database["warning"] is None  # seconds old, not minutes
            assert "query" not in oldest
            assert set(database["job_table"]) == {
                "live_tuples",
                "dead_tuples",
                "last_autovacuum",
                "last_vacuum",
            }
            page = client.get("/").text
            assert 'id="oldest-transaction"' in page and 'id="job-table-rows"' in page
            assert 'id="vacuum-warning"' not in page

            monkeypatch.setattr(_data, "TRANSACTION_WARNING_S", 0.0)
            database = naming(holder.pid, lambda: client.get("/api/overview").json()["database"])
            assert database["warning"] is not None
            assert f"pid {holder.pid}" in database["warning"]
            assert "autovacuum cannot remove" in database["warning"]

            def page_naming_it() -> str | None:
                text = client.get("/").text
                return text if f"pid {holder.pid}" in text else None

            page = wait_until(page_naming_it, timeout=60, interval=0.1)
            assert 'id="vacuum-warning"' in page

            holder.conn.commit()
            oldest = client.get("/api/overview").json()["database"]["oldest_transaction"]
            assert oldest is None or oldest["pid"] != holder.pid


class TestMetrics:
    def test_gauges_export_the_oldest_transaction_age_and_the_dead_rows(
        self, config: Config, db: psycopg.Connection[Any], holder: Holder
    ) -> None:
        """The gauges pass carries the oldest transaction's age and the job table's rows to Prometheus."""
        wait_until_oldest(db, config, holder.pid)
        service = QueueGauges(config, interval_ms=15_000, worker_stale_threshold_ms=60_000)
        (gauges,) = service.run_once(db).events
        assert type(gauges) is events.OrchestratorQueueGauges
        age = gauges.oldest_transaction_age_s
        assert age is not None and age >= 0
        assert gauges.oldest_transaction_xid_age is not None
        assert gauges.oldest_transaction_xid_age >= 0
        assert gauges.job_live_tuples is not None  # a migrated table has stats
        assert gauges.job_dead_tuples is not None

        registry = CollectorRegistry()
        handler = PrometheusHandler(registry)
        handler(gauges)
        assert registry.get_sample_value("orchestra_oldest_transaction_age_seconds") == age
        assert registry.get_sample_value("orchestra_job_table_dead_tuples") == float(
            gauges.job_dead_tuples
        )
        assert registry.get_sample_value("orchestra_job_table_live_tuples") == float(
            gauges.job_live_tuples
        )

        holder.conn.commit()
        assert oldest_pid(db, config) != holder.pid


class TestWithoutMonitoringPrivileges:
    def test_another_roles_transaction_is_reported_with_its_age_hidden_and_a_hint(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any], holder: Holder
    ) -> None:
        """A role without pg_monitor still sees which session holds the oldest snapshot, but not its age or state; health says to grant pg_monitor."""
        role = f"orchestra_probe_{uuid.uuid4().hex[:10]}"
        db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            db.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.{t} TO {r}").format(
                    s=sql.Identifier(config.schema),
                    t=sql.Identifier("schema_version"),
                    r=sql.Identifier(role),
                )
            )
            dsn = conninfo.make_conninfo(test_dsn, user=role)
            with psycopg.connect(dsn, autocommit=True) as probe:
                oldest = naming(holder.pid, lambda: horizon(probe, config).as_dict())[
                    "oldest_transaction"
                ]
                assert oldest["hidden"] is True
                assert oldest["age_s"] is None and oldest["state"] is None
                assert oldest["application_name"] == APPLICATION

            def hinted() -> bool:
                result = health("--dsn", dsn, "--schema", config.schema)
                assert result.exit_code == 0, result.output
                return MONITOR_HINT in result.stdout and f"pid {holder.pid}" in result.stdout

            wait_until(hinted, timeout=60, interval=0.1, message="no hint to grant pg_monitor")
        finally:
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
