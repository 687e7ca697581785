"""Resource keys: at most one running job per key, fleet-wide.

Two printers, six print jobs, a worker with room for six at once: jobs of the
same printer run one after the other, the two printers in parallel, and no job
waiting for its printer fails or spends an attempt.

Run: python examples/resource_lock.py
"""

from __future__ import annotations

import os
import threading
import time

from orchestra import Config, JobDefinition, Worker

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_resource_lock"))
lock = threading.Lock()
busy: dict[str, int] = {}
peak: dict[str, int] = {}


def print_page(payload: dict[str, str]) -> None:
    printer = payload["printer"]
    with lock:
        busy[printer] = busy.get(printer, 0) + 1
        peak[printer] = max(peak.get(printer, 0), busy[printer])
    time.sleep(0.05)  # the printer at work
    with lock:
        busy[printer] -= 1


printing = JobDefinition(config, name="print", job_function=print_page)


def main() -> None:
    config.prepare_schema()
    handles = [
        printing.defer({"printer": printer, "page": str(page)}, resource_key=printer)
        for page in range(3)
        for printer in ("laser", "inkjet")
    ]
    worker = Worker(config, concurrency=6, process_interval_ms=100)
    worker.start()
    try:
        for handle in handles:
            handle.result(timeout=30)
    finally:
        worker.stop()
        worker.join()
    print(f"most jobs running at once per printer: {dict(sorted(peak.items()))}")
    spent = [config.jobs.get(h.id, with_attempts=False).attempt for h in handles]
    print(f"attempts spent per job: {spent}")
    config.close()


if __name__ == "__main__":
    main()
