"""Measure how soon a dependent starts after its last dependency succeeded.

Usage: python benchmarks/dependency_handoff.py [pairs]   (ORCHESTRA_DSN, else embedded)

Defers ``pairs`` chains A -> B, then runs one worker (concurrency 8) until all are
done, and prints percentiles of B's start minus A's finish, both read from the
attempt log (database clock). Until `orchestra bench` exists (issue 7), this
is the reproducible measurement behind the figure in CHANGELOG.md.
"""

from __future__ import annotations

import statistics
import sys
import time

from orchestra import Config, JobDefinition, Orchestrator, Worker

SCHEMA = "bench_handoff"


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    config = Config(schema=SCHEMA)
    with config.connection() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    config.prepare_schema()
    step = JobDefinition(config, name="step", job_function=lambda p: None)
    worker = Worker(config, concurrency=8, name="bench")
    # The orchestrator's finalizer releases the rare dependent whose dependency
    # finished while the dependent's own defer was still uncommitted (decision 0007).
    orchestrator = Orchestrator(config, name="bench", finalize_interval_ms=500)
    for _ in range(pairs):  # deferred first, so that only the hand-off is measured
        first = step.defer({})
        step.defer({}, depends_on=[first])
    worker.start()
    orchestrator.start()
    deadline = time.monotonic() + 120
    while worker.stats.succeeded < 2 * pairs and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    orchestrator.stop()
    worker.join()
    orchestrator.join()
    caught_up = orchestrator.passes["finalizer"]
    with config.connection() as conn:
        rows = conn.execute(
            f"SELECT extract(epoch FROM b.started_at - a.finished_at) * 1000 "
            f"FROM {SCHEMA}.job_dependency d "
            f"JOIN {SCHEMA}.all_job_attempts a ON a.job_id = d.required_job_id "
            f"JOIN {SCHEMA}.all_job_attempts b ON b.job_id = d.job_id"
        ).fetchall()
        released = conn.execute(
            f"SELECT count(*) FROM {SCHEMA}.all_job_attempts WHERE outcome = 'succeeded'"
        ).fetchone()
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    config.close()
    latencies = sorted(float(r[0]) for r in rows)
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{released[0] if released else 0} jobs succeeded after {caught_up} finalizer passes")
    print(
        f"{len(latencies)} hand-offs: p50 {cuts[49]:.2f} ms, p95 {cuts[94]:.2f} ms, "
        f"p99 {cuts[98]:.2f} ms, max {latencies[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
