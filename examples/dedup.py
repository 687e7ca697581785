"""Deduplication: a second defer of pending work returns the first job.

Run: python examples/dedup.py
"""

from __future__ import annotations

import os

from orchestra import Config, JobDefinition, Worker

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_dedup"))


def reindex(payload: dict[str, object]) -> None:
    print(f"reindexing {payload}")


reindex_user = JobDefinition(config, name="reindex-user", job_function=reindex)


def main() -> None:
    config.prepare_schema()
    # An explicit key: one pending reindex per user, however often it is asked for.
    first = reindex_user.defer({"user": 42}, unique_key="user-42")
    second = reindex_user.defer({"user": 42, "reason": "again"}, unique_key="user-42")
    print(f"unique_key: first={first.id} second={second.id} deduplicated={second.deduplicated}")

    # A key derived from the payload; key order does not matter.
    a = reindex_user.defer({"user": 7, "fields": ["name", "email"]}, dedup=True)
    b = reindex_user.defer({"fields": ["name", "email"], "user": 7}, dedup=True)
    print(f"dedup=True: same job: {a.id == b.id}")

    worker = Worker(config, process_interval_ms=100)
    worker.start()
    try:
        first.result(timeout=30)
        a.result(timeout=30)
    finally:
        worker.stop()
        worker.join()
    # Once the job is finished the key is free again: new work gets a new job.
    third = reindex_user.defer({"user": 42}, unique_key="user-42")
    print(f"after it ran: new job {third.id != first.id}")
    config.close()


if __name__ == "__main__":
    main()
