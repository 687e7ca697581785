"""``orchestra bench`` runs end to end on a tiny workload (speed is not asserted here).

Speed lives in the benchmark and docs/BENCHMARKS.md; this only proves the
command works, reports every figure next to the lean floor (and PgQueuer when
asked), and cleans up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestra import _db
from orchestra.testing import wait_until
from tests._pgbouncer import PgBouncer
from tests.e2e._support import REPO, orchestra_argv

TINY = (
    "--jobs",
    "300",
    "--single-defers",
    "20",
    "--latency-jobs",
    "4",
    "--latency-rate",
    "50",
    "--idle-seconds",
    "0.5",
    "--concurrency",
    "10",
    "--json",
)

FIGURES = [
    "defer, one per transaction",
    "defer_many, batches of 1000",
    "processing, steady (10-90 %)",
    "processing, end to end",
    "worker RSS growth, 10 % to done",
    "latency p50, defer to start",
    "latency p95, defer to start",
    "latency p99, defer to start",
    "idle worker CPU",
    "idle statements per interval",
]
#: Figures without a floor: orchestra's own costs.
OWN_COSTS = {
    "worker RSS growth, 10 % to done",
    "idle worker CPU",
    "idle statements per interval",
}


def _bench(test_dsn: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        orchestra_argv("bench", "--dsn", test_dsn, *TINY, *extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # A tiny run says its figures mean little.
    assert "--jobs 300 is too few" in done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _schemas_left(db: psycopg.Connection[Any], *names: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)", [list(names)]
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_bench_reports_every_figure_against_the_lean_floor_and_drops_its_schema(
    test_dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A tiny run prints one JSON document with every measurement; no bench schema is left."""
    report = _bench(test_dsn)
    assert [f["name"] for f in report["figures"]] == FIGURES
    for figure in report["figures"]:
        assert figure["orchestra"] >= 0, figure
        assert figure["pgqueuer"] is None, figure
        assert figure["ratio_pgqueuer"] is None, figure
        if figure["name"] in OWN_COSTS:
            assert figure["floor"] is None, figure
            assert figure["ratio_floor"] is None, figure
            continue
        assert figure["orchestra"] > 0, figure
        assert figure["floor"] > 0, figure
        if figure["unit"] == "ms":  # latencies: the floor's over orchestra's
            expected = figure["floor"] / figure["orchestra"]
        else:
            expected = figure["orchestra"] / figure["floor"]
        assert figure["ratio_floor"] == pytest.approx(expected, rel=0.01, abs=0.002), figure
    assert report["settings"]["jobs"] == 300
    assert report["peers"] == {}
    assert any("--jobs 300" in warning for warning in report["warnings"])
    assert report["schema"].startswith("orchestra_bench_")
    assert _schemas_left(db, report["schema"]) == 0


def _pooled_transactions(pgbouncer: PgBouncer) -> int:
    """Transactions PgBouncer has passed to the server for the test database."""
    return sum(
        int(row["total_xact_count"])
        for row in pgbouncer.admin("SHOW STATS")
        if row["database"] != "pgbouncer"
    )


def test_bench_through_pgbouncer_runs_orchestra_pooled_and_the_floor_direct(
    test_dsn: str, db: psycopg.Connection[Any], pgbouncer: PgBouncer
) -> None:
    """--transaction-pooling: orchestra's defers and workers pass through a real PgBouncer in
    transaction mode (no prepared statement errors), the floor runs on --listen-dsn."""
    before = _pooled_transactions(pgbouncer)
    report = _bench(pgbouncer.dsn, "--transaction-pooling", "--listen-dsn", test_dsn)
    assert [f["name"] for f in report["figures"]] == FIGURES
    for figure in report["figures"]:
        if figure["name"] not in OWN_COSTS:
            assert figure["orchestra"] > 0, figure
            assert figure["floor"] > 0, figure
    assert report["transaction_pooling"] is True
    assert report["paths"] == {
        "orchestra": f"{_db.redact_dsn(pgbouncer.dsn)} "
        f"(transaction pooling; LISTEN at {_db.redact_dsn(test_dsn)})",
        "floor": _db.redact_dsn(test_dsn),
    }
    # At least the 20 single defers and the 4 latency jobs went through the pooler.
    wait_until(
        lambda: _pooled_transactions(pgbouncer) - before >= 24,
        timeout=30,
        message="PgBouncer passed fewer transactions than orchestra's defers",
    )
    assert _schemas_left(db, report["schema"]) == 0


@pytest.mark.skipif(
    importlib.util.find_spec("pgqueuer") is None,
    reason="PgQueuer (the bench extra) is not installed",
)
def test_bench_with_pgqueuer_reports_its_figures_and_drops_its_schema(
    test_dsn: str, db: psycopg.Connection[Any]
) -> None:
    """--peers pgqueuer: a PgQueuer value beside every compared figure, all its jobs done."""
    in_public_before = _pgqueuer_tables_in_public(db)
    report = _bench(test_dsn, "--peers", "pgqueuer")
    assert [f["name"] for f in report["figures"]] == FIGURES
    peer = report["peers"]["pgqueuer"]
    assert peer["processed"] == 300
    assert peer["schema"] == f"{report['schema']}_pgqueuer"
    for figure in report["figures"]:
        if figure["name"] in {"idle worker CPU", "idle statements per interval"}:
            assert figure["pgqueuer"] is None, figure
            continue
        assert figure["pgqueuer"] is not None, figure
        if figure["name"] not in OWN_COSTS:
            assert figure["pgqueuer"] > 0, figure
            assert figure["ratio_pgqueuer"] > 0, figure
    assert _schemas_left(db, report["schema"], peer["schema"]) == 0
    assert _pgqueuer_tables_in_public(db) == in_public_before


def _pgqueuer_tables_in_public(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_class"
        " WHERE relname LIKE 'pgqueuer%' AND relnamespace = 'public'::regnamespace"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_bench_peers_pgqueuer_without_the_extra_says_what_to_install(
    test_dsn: str, tmp_path: Path
) -> None:
    """Without PgQueuer importable, --peers pgqueuer stops with one line naming the extra."""
    # A pgqueuer package that fails to import stands in for a missing one.
    (tmp_path / "pgqueuer").mkdir()
    (tmp_path / "pgqueuer" / "__init__.py").write_text("raise ImportError('not installed')\n")
    done = subprocess.run(
        orchestra_argv("bench", "--dsn", test_dsn, *TINY, "--peers", "pgqueuer"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, done.stderr
    assert "orchestra-queue[bench]" in lines[0]
