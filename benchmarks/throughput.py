"""First throughput figure: N no-op jobs through one in-process worker.

Usage: python benchmarks/throughput.py [jobs] [concurrency] [sync|async]
(ORCHESTRA_DSN, else the embedded PostgreSQL). Defers the jobs with
defer_many, then times one Worker draining them. A stopgap until
`orchestra bench` (issue 7) measures against a raw-SQL baseline.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from orchestra import Config, JobDefinition, Worker

SCHEMA = "bench_throughput"


def sync_noop(payload: Any) -> None:
    """Run in the worker's thread pool."""


async def async_noop(payload: Any) -> None:
    """Run on the worker's event loop."""


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    kind = sys.argv[3] if len(sys.argv) > 3 else "sync"
    config = Config(schema=SCHEMA)
    with config.connection() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    config.prepare_schema()
    function: Callable[..., Any] = async_noop if kind == "async" else sync_noop
    noop = JobDefinition(config, name="noop", job_function=function)
    started = time.perf_counter()
    noop.defer_many([{} for _ in range(jobs)])
    enqueue_s = time.perf_counter() - started
    worker = Worker(config, concurrency=concurrency, name="bench")
    started = time.perf_counter()
    worker.start()
    while worker.stats.succeeded < jobs:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    worker.stop()
    worker.join()
    with config.connection() as conn:
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    config.close()
    print(
        f"{kind} def, {jobs} jobs, concurrency {concurrency}: {jobs / elapsed:,.0f} jobs/s "
        f"({elapsed:.2f} s, {worker.stats.claim_queries} claim queries); "
        f"defer_many {jobs / enqueue_s:,.0f} jobs/s"
    )


if __name__ == "__main__":
    main()
