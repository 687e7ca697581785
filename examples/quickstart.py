"""Quickstart: define a typed job, defer a few, run a worker until they are done.

Run: python examples/quickstart.py   (uses ORCHESTRA_DSN, else the embedded PostgreSQL)
"""

from __future__ import annotations

import os

import attrs

from orchestra import Config, JobContext, JobDefinition, Worker
from orchestra.events import WorkerJobSucceeded
from orchestra.testing import EventRecorder

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_quickstart"))


@attrs.frozen
class SendEmail:
    to: str
    subject: str


def send_email(payload: SendEmail, ctx: JobContext) -> dict[str, str]:
    ctx.logger.info("sending %r to %s", payload.subject, payload.to)
    return {"delivered_to": payload.to}


send = JobDefinition(
    config,
    name="send-email",
    job_function=send_email,
    payload_type=SendEmail,
    channel="mail",
    num_attempts=5,
    backoff="exponential",
)


def main() -> None:
    config.prepare_schema()
    handles = [send.defer(SendEmail(f"user{i}@example.com", "hello")) for i in range(3)]
    recorder = EventRecorder()
    worker = Worker(config, channel="mail", concurrency=4, event_handler=recorder)
    worker.start()
    recorder.wait_for(
        WorkerJobSucceeded, lambda e: e.job_id in {h.id for h in handles}, count=3, timeout=30
    )
    worker.stop()
    worker.join()
    print("statuses:", [h.status() for h in handles])
    config.close()


if __name__ == "__main__":
    main()
