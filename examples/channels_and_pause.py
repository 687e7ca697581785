"""One worker, two channels, taking turns; then pausing and resuming a definition.

Run: python examples/channels_and_pause.py
"""

from __future__ import annotations

import os

from orchestra import Config, JobDefinition, Worker

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_channels"))
order: list[str] = []


def record(payload: dict[str, str]) -> None:
    order.append(payload["name"])


report = JobDefinition(config, name="build-report", job_function=record, channel="reports")
email = JobDefinition(config, name="send-email", job_function=record, channel="mail")


def main() -> None:
    config.prepare_schema()
    # A backlog of reports, deferred before the email: with one channel and
    # FIFO the email would wait for all of them.
    backlog = [report.defer({"name": f"report-{i}"}) for i in range(1, 5)]
    first_email = email.defer({"name": "email-1"})
    # concurrency=1: one job at a time, so the run order is the claim order.
    # The two channels take turns: the email runs second.
    worker = Worker(config, channels=["reports", "mail"], concurrency=1, process_interval_ms=100)
    worker.start()
    try:
        for handle in [*backlog, first_email]:
            handle.result(timeout=30)
        print(f"order: {order}")

        # Pausing a definition: workers leave its jobs alone from their next
        # claim on (no restart); other jobs of the channel run as usual.
        config.definitions.pause("send-email")
        held = email.defer({"name": "email-2"})
        report.defer({"name": "report-5"}).result(timeout=30)
        print(f"email-2 while send-email is paused: {held.status()}")
        config.definitions.resume("send-email")  # wakes the worker
        held.result(timeout=30)
        print(f"email-2 after the resume: {held.status()}")

        # A channel is paused the same way (it need not have any job yet).
        config.channels.pause("reports")
        print(f"paused channels: {[p.channel for p in config.channels.paused()]}")
        config.channels.resume("reports")
    finally:
        worker.stop()
        worker.join()
    config.close()


if __name__ == "__main__":
    main()
