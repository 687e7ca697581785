"""Snooze a job until its work can be done, and cancel a job while it runs.

* ``wait-for-export`` polls an export that takes a while: until it is ready the
  job snoozes (``return ctx.snooze(seconds)``), which spends no attempt, so one
  attempt is enough however long the export takes.
* ``crunch`` is a long ``def`` job that checks ``ctx.should_stop``; it is
  cancelled while it runs (``config.jobs.cancel``, as ``orchestra jobs cancel``
  and the dashboard do), and its worker tells it to stop.

Run: python examples/snooze_and_cancel.py
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from orchestra import Config, JobContext, JobDefinition, Worker
from orchestra.events import WorkerJobCancelled, WorkerJobSnoozed, WorkerJobSucceeded
from orchestra.testing import EventRecorder

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_snooze_and_cancel"))

#: When the pretend export is ready: 0.6 s after the job first looked.
ready_at: list[float] = []
crunching = threading.Event()


def wait_for_export(payload: dict[str, str], ctx: JobContext) -> Any:
    if not ready_at:
        ready_at.append(time.monotonic() + 0.6)
    if time.monotonic() < ready_at[0]:
        ctx.logger.info("export %s not ready yet", payload["export"])
        return ctx.snooze(0.25)  # or: raise Snooze(0.25)
    return {"url": f"https://example.com/{payload['export']}.csv", "attempt": ctx.attempt}


def crunch(payload: dict[str, int], ctx: JobContext) -> int:
    crunching.set()
    done = 0
    while done < payload["rows"]:
        if ctx.should_stop:  # the job was cancelled (or the worker stops)
            return done  # discarded: the job is cancelled
        time.sleep(0.01)
        done += 1
    return done


export = JobDefinition(config, name="wait-for-export", job_function=wait_for_export)
numbers = JobDefinition(config, name="crunch", job_function=crunch, num_attempts=3)


def main() -> None:
    config.prepare_schema()
    recorder = EventRecorder()
    worker = Worker(config, concurrency=2, event_handler=recorder, process_interval_ms=50)
    worker.start()
    try:
        waiting = export.defer({"export": "march"})
        print("export:", waiting.result(timeout=30))
        snoozes = recorder.of_type(WorkerJobSnoozed)
        job = config.jobs.get(waiting.id)
        print(
            f"export: snoozed {len(snoozes)} times, then ran as attempt {job.attempt} of "
            f"{job.max_attempts}"
        )

        long = numbers.defer({"rows": 1_000_000})
        crunching.wait(10)
        config.jobs.cancel(long.id)
        recorder.wait_for(WorkerJobCancelled, lambda e: e.job_id == long.id, timeout=30)
        cancelled = config.jobs.get(long.id)
        log = [(a.attempt, a.outcome) for a in cancelled.attempts or ()]
        print(f"crunch: {cancelled.status}, attempt log {log}")
        assert not any(e.job_id == long.id for e in recorder.of_type(WorkerJobSucceeded))
    finally:
        worker.stop()
        worker.join()
        config.close()


if __name__ == "__main__":
    main()
