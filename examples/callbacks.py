"""Lifecycle callbacks: on_attempt, on_success, on_failure.

Run: python examples/callbacks.py
"""

from __future__ import annotations

import contextlib
import os

from orchestra import Config, Job, JobContext, JobDefinition, JobFailed, Worker

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_callbacks"))


def charge(payload: dict[str, int], ctx: JobContext) -> str:
    if payload["cents"] < 0:
        raise ValueError("negative amount")
    if ctx.attempt == 1:
        raise ConnectionError("payment gateway timeout")
    return f"charged {payload['cents']} cents"


def on_attempt(job: Job) -> None:
    print(f"attempt {job.attempt} of job {job.id}: now {job.status}")


def on_success(job: Job) -> None:
    print(f"job {job.id} succeeded: {job.result}")


def on_failure(job: Job) -> None:
    # Only after the final attempt: alert someone.
    print(f"job {job.id} failed for good after {job.attempt} attempts: {job.last_error}")


charging = JobDefinition(
    config,
    name="charge",
    job_function=charge,
    num_attempts=2,
    backoff="none",
    on_attempt=on_attempt,
    on_success=on_success,
    on_failure=on_failure,
)


def main() -> None:
    config.prepare_schema()
    good = charging.defer({"cents": 1250})
    bad = charging.defer({"cents": -1})
    # concurrency=1 keeps the printed lines in a stable order.
    worker = Worker(config, concurrency=1, process_interval_ms=100)
    worker.start()
    try:
        good.result(timeout=30)
        with contextlib.suppress(JobFailed):
            bad.result(timeout=30)
    finally:
        worker.stop()  # waits for the callbacks of the last attempt
        worker.join()
    config.close()


if __name__ == "__main__":
    main()
