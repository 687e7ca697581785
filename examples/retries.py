"""Retries with backoff, and the attempt log.

Run: python examples/retries.py
"""

from __future__ import annotations

import os

from orchestra import Backoff, Config, JobContext, JobDefinition, Worker
from orchestra.events import WorkerJobFailed, WorkerJobSucceeded
from orchestra.testing import EventRecorder

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_retries"))


def call_flaky_api(payload: dict[str, str], ctx: JobContext) -> str:
    if ctx.attempt < 3:
        raise ConnectionError(f"upstream unavailable (attempt {ctx.attempt})")
    return "ok"


flaky = JobDefinition(
    config,
    name="flaky-api",
    job_function=call_flaky_api,
    num_attempts=5,
    backoff=Backoff.exponential(base_ms=200, max_ms=2_000),
)


def main() -> None:
    config.prepare_schema()
    handle = flaky.defer({"resource": "invoices"})
    recorder = EventRecorder()
    worker = Worker(config, event_handler=recorder, process_interval_ms=100)
    worker.start()
    recorder.wait_for(WorkerJobSucceeded, lambda e: e.job_id == handle.id, timeout=30)
    worker.stop()
    worker.join()
    for failure in recorder.of_type(WorkerJobFailed):
        print(f"attempt {failure.attempt} failed: {failure.error}; retry at {failure.retry_at}")
    job = config.jobs.get(handle.id)
    rows = [(a.attempt, a.outcome, a.error) for a in job.attempts or ()]
    print("attempt log:", rows)
    config.close()


if __name__ == "__main__":
    main()
