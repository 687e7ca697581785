"""Dependencies: a job runs only after all the jobs it depends on succeeded.

Run: python examples/dependencies.py
"""

from __future__ import annotations

import asyncio
import os

from orchestra import Config, JobDefinition, Worker
from orchestra.events import WorkerJobSucceeded
from orchestra.testing import EventRecorder

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_dependencies"))
finished: list[str] = []


async def step(payload: dict[str, str]) -> str:
    await asyncio.sleep(0.05)
    finished.append(payload["name"])
    return payload["name"]


pipeline = JobDefinition(config, name="pipeline-step", job_function=step)


def main() -> None:
    config.prepare_schema()
    extract_a = pipeline.defer({"name": "extract-a"})
    extract_b = pipeline.defer({"name": "extract-b"})
    merge = pipeline.defer({"name": "merge"}, depends_on=[extract_a, extract_b])
    load = pipeline.defer({"name": "load"}, depends_on=[merge])
    print("load is", load.status(), "until its dependencies succeed")
    recorder = EventRecorder()
    worker = Worker(config, concurrency=4, event_handler=recorder)
    worker.start()
    recorder.wait_for(WorkerJobSucceeded, lambda e: e.job_id == load.id, timeout=30)
    worker.stop()
    worker.join()
    print("order:", finished)
    config.close()


if __name__ == "__main__":
    main()
