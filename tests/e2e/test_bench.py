"""``orchestra bench`` runs end to end on a tiny workload (speed is not asserted here).

Speed lives in the benchmark and docs/BENCHMARKS.md; this only proves the
command works, reports every figure with its baseline, and cleans up.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import psycopg

from tests.e2e._support import REPO, orchestra_argv


def test_bench_reports_every_figure_next_to_its_baseline_and_drops_its_schema(
    test_dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A tiny run prints one JSON document with every measurement; no bench schema is left."""
    done = subprocess.run(
        orchestra_argv(
            "bench",
            "--dsn",
            test_dsn,
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
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    names = [f["name"] for f in report["figures"]]
    assert names == [
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
    for figure in report["figures"]:
        if figure["baseline"] is not None:  # idle and memory figures have no baseline
            assert figure["orchestra"] > 0, figure
            assert figure["baseline"] > 0, figure
            assert figure["ratio"] > 0, figure
    assert report["settings"]["jobs"] == 300
    assert report["schema"].startswith("orchestra_bench_")
    left = db.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [report["schema"]]
    ).fetchone()
    assert left == (0,)
