"""Managing jobs: find, list, retry, cancel, delete.

The same operations are on the command line: ``orchestra jobs list|show|retry|
cancel|delete`` and ``orchestra definitions list``.

Run: python examples/manage_jobs.py
"""

from __future__ import annotations

import contextlib
import os

from orchestra import Config, JobDefinition, JobFailed, Worker

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_manage_jobs"))
upstream_up = False


def sync_account(payload: dict[str, int]) -> str:
    if not upstream_up:
        raise ConnectionError("CRM unreachable")
    return f"account {payload['account']} synced"


syncing = JobDefinition(
    config, name="sync-account", job_function=sync_account, num_attempts=2, backoff="none"
)


def main() -> None:
    global upstream_up
    config.prepare_schema()
    jobs = config.jobs
    handles = [syncing.defer({"account": n}) for n in range(3)]
    later = syncing.defer({"account": 99}, delay_ms=3_600_000)

    worker = Worker(config, concurrency=3, process_interval_ms=100)
    worker.start()
    try:
        for handle in handles:
            with contextlib.suppress(JobFailed):
                handle.result(timeout=30)
        failed = jobs.list(status="failed", definition="sync-account")
        print(f"failed: {len(failed)}, first error: {failed[0].last_error}")
        shown = jobs.get(failed[0].id)
        print(f"attempt log of job {shown.id}: {[a.outcome for a in shown.attempts or ()]}")

        upstream_up = True  # the CRM is back: retry them all with a fresh attempt budget
        print(f"retried: {jobs.retry_failed(definition='sync-account')}")
        print(f"results: {[h.result(timeout=30) for h in handles]}")

        print(f"cancelled the delayed job: {jobs.cancel(later.id).status}")
        jobs.delete(later.id)
        counts = {d.name: dict(d.counts) for d in jobs.definitions()}
        print(f"succeeded now: {counts['sync-account']['succeeded']}")
    finally:
        worker.stop()
        worker.join()
    config.close()


if __name__ == "__main__":
    main()
