"""Request/response: wait for a job's result, from this process or any other.

Run: python examples/request_response.py
"""

from __future__ import annotations

import os

import attrs

from orchestra import Config, JobDefinition, JobFailed, JobHandle, Worker

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_request_response"))


@attrs.frozen
class Quote:
    """What the pricing job answers."""

    sku: str
    cents: int


def price(payload: dict[str, int | str]) -> Quote:
    if payload["quantity"] == 0:
        raise ValueError("quantity must be positive")
    return Quote(sku=str(payload["sku"]), cents=int(payload["quantity"]) * 499)


pricing = JobDefinition(config, name="price", job_function=price)


def main() -> None:
    config.prepare_schema()
    worker = Worker(config, concurrency=4, process_interval_ms=100)
    worker.start()
    try:
        handle = pricing.defer({"sku": "tea-42", "quantity": 3})
        # Blocks until the worker has finished the job (LISTEN/NOTIFY, polling fallback).
        quote = handle.result(timeout=30, as_type=Quote)
        print(f"quote: {quote}")

        # The result lives in the database: a handle rebuilt from the id, in
        # another process or after a restart, reads it again.
        again = JobHandle(handle.id, config).result(timeout=5)
        print(f"again by id {handle.id}: {again}")

        failing = pricing.defer({"sku": "tea-42", "quantity": 0})
        try:
            failing.result(timeout=30)
        except JobFailed as failed:
            print(f"job {failed.job_id} {failed.status}: {failed.error}")
    finally:
        worker.stop()
        worker.join()
        config.close()


if __name__ == "__main__":
    main()
