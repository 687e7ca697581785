"""Tags and metadata given at defer, and the progress a long job reports while it runs.

Run: python examples/tags_and_progress.py
"""

from __future__ import annotations

import os
import threading

from orchestra import Config, JobContext, JobDefinition, Worker
from orchestra.testing import wait_until

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_tags"))
# Lets the example look at the job half way through; a real job just works on.
halfway = threading.Event()


def send_invoices(payload: dict[str, int], ctx: JobContext) -> dict[str, int]:
    """Bill every line, saying how far it got after each one."""
    tenant = ctx.meta["tenant"]  # what the producer attached; read-only
    total = payload["lines"]
    for done in range(1, total + 1):
        # ... bill line `done` of `tenant` ...
        ctx.set_progress({"done": done, "total": total})  # cheap: written at most every 0.5 s
        if done == total // 2:
            halfway.wait(30)
    return {"billed": total, "tenant": tenant}


invoices = JobDefinition(config, name="send-invoices", job_function=send_invoices)


def main() -> None:
    config.prepare_schema()
    handle = invoices.defer({"lines": 10}, tags=["billing", "eu"], meta={"tenant": 42})
    invoices.defer({"lines": 3}, tags=["billing", "us"], meta={"tenant": 7})
    print(f"tagged eu: {[job.id for job in config.jobs.list(tag='eu')]}")

    worker = Worker(config, concurrency=2, process_interval_ms=100)
    worker.start()
    try:
        # While it runs, its progress is on its row (the worker writes it
        # within half a second of the job's report).
        wait_until(lambda: handle.progress() == {"done": 5, "total": 10}, timeout=30)
        print(f"while running: {handle.status()}, progress {handle.progress()}")
        halfway.set()
        print(f"result: {handle.result(timeout=30)}")
    finally:
        worker.stop()
        worker.join()

    job = config.jobs.get(handle)
    print(f"tags {list(job.tags)}, meta {job.meta}, final progress {job.progress}")
    print(f"billing jobs finished: {config.jobs.count(tag='billing', status='succeeded')}")
    config.close()


if __name__ == "__main__":
    main()
