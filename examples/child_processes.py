"""CPU-bound jobs in child processes: Worker(processes=N).

Threads share the GIL, so CPU-bound job functions need processes. A child that
crashes fails only the attempt it was running (the job is retried as any
failure) and is replaced.

Run: python examples/child_processes.py
"""

from __future__ import annotations

import os
import signal

from orchestra import Config, JobContext, JobDefinition, Worker

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_child_processes"))


# Job functions must be module-level: a child process imports them by name.
def count_primes(payload: dict[str, int]) -> dict[str, int]:
    limit = payload["below"]
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, limit, i)))
    return {"below": limit, "primes": sum(sieve), "pid": os.getpid()}


def crashes_once(payload: dict[str, int], ctx: JobContext) -> str:
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # a segfault in a C extension, say
    return f"survived on attempt {ctx.attempt}"


primes = JobDefinition(config, name="count-primes", job_function=count_primes)
fragile = JobDefinition(
    config, name="fragile", job_function=crashes_once, num_attempts=2, backoff="none"
)


def main() -> None:
    config.prepare_schema()
    handles = [primes.defer({"below": 200_000 * (n + 1)}) for n in range(4)]
    crash = fragile.defer({})
    worker = Worker(config, processes=2, process_interval_ms=100)
    worker.start()
    try:
        results = [h.result(timeout=60) for h in handles]
        print(f"fragile: {crash.result(timeout=60)}")
    finally:
        worker.stop()
        worker.join()
    for result in results:
        print(f"primes below {result['below']}: {result['primes']}")
    children = {r["pid"] for r in results}
    print(
        f"ran in {len(children)} child process(es), not in {os.getpid()}: "
        f"{os.getpid() not in children}"
    )
    config.close()


if __name__ == "__main__":
    main()
