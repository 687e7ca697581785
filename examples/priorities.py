"""Priorities: higher runs first, FIFO within a priority.

Run: python examples/priorities.py
"""

from __future__ import annotations

import os

from orchestra import Config, JobDefinition, Worker

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_priorities"))
order: list[str] = []


def record(payload: dict[str, str]) -> None:
    order.append(payload["name"])


# The definition's default priority is 0 (the middle of -100..100).
task = JobDefinition(config, name="task", job_function=record)
urgent = JobDefinition(config, name="urgent", job_function=record, priority=50)


def main() -> None:
    config.prepare_schema()
    handles = [
        task.defer({"name": "bulk-1"}),
        task.defer({"name": "bulk-2"}),
        urgent.defer({"name": "page-oncall"}),
        task.defer({"name": "vip"}, priority=90),  # a per-defer override
        task.defer({"name": "cleanup"}, priority=-50),
        task.defer({"name": "bulk-3"}),
    ]
    # concurrency=1: one job at a time, so the run order is the claim order.
    worker = Worker(config, concurrency=1, process_interval_ms=100)
    worker.start()
    try:
        for handle in handles:
            handle.result(timeout=30)
    finally:
        worker.stop()
        worker.join()
    print(f"order: {order}")
    config.close()


if __name__ == "__main__":
    main()
