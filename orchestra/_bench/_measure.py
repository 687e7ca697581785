"""What orchestra's run, the lean floor and the peers share: the settings, the
bench's SQL, the no-op job, and the worker processes whose progress they follow."""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from importlib import resources

import attrs

from orchestra import _sql

#: How often a bench worker reports its progress, and how often the bench looks.
POLL_S = 0.02
#: Peers the bench knows how to run.
PEERS = ("pgqueuer",)
#: Below this many jobs a processing run is mostly start-up and ramp.
MEANINGFUL_JOBS = 5_000
#: Below this many latency jobs p99 is the slowest sample or close to it.
MEANINGFUL_LATENCY_JOBS = 100


def noop() -> None:
    """The no-op job of the processing runs (and the floor's per-row call)."""


@functools.cache
def _templates() -> dict[str, str]:
    # bench.sql sits beside this module, not in orchestra/sql: a Config never loads it.
    text = resources.files("orchestra._bench").joinpath("bench.sql").read_text("utf-8")
    return _sql.parse_queries(text, source="bench.sql")


def bench_queries(schema: str) -> dict[str, bytes]:
    """The bench's queries, rendered for ``schema`` as orchestra's own are."""
    return {name: _sql.render(template, schema) for name, template in _templates().items()}


@attrs.frozen
class Settings:
    """What to measure (the command's options)."""

    jobs: int = 20_000
    processes: int = 1
    concurrency: int = 100
    single_defers: int = 2_000
    latency_jobs: int = 100
    latency_rate: float = 20.0
    idle_seconds: float = 5.0
    process_interval_ms: int = 1_000
    #: Finalized jobs left in the table for a second processing run (0: none).
    finalized_rows: int = 0
    #: Other queues measured on the same workloads (names from PEERS).
    peers: tuple[str, ...] = ()

    def warnings(self) -> list[str]:
        """Why some figures of these settings will not mean much (empty: none)."""
        found = []
        if self.jobs < MEANINGFUL_JOBS:
            found.append(
                f"--jobs {self.jobs:,} is too few for the processing figures to mean anything "
                f"(start-up and ramp dominate): use at least {MEANINGFUL_JOBS:,}"
            )
        if self.latency_jobs < MEANINGFUL_LATENCY_JOBS:
            found.append(
                f"--latency-jobs {self.latency_jobs} is too few for p95/p99 to mean anything: "
                f"use at least {MEANINGFUL_LATENCY_JOBS}"
            )
        return found


@attrs.frozen
class Drained:
    """A processing run: seconds to the last job, seconds from 10 % to 90 %, RSS growth %."""

    total_s: float
    steady_s: float
    rss_growth: float


def start_workers(
    argv: list[str],
    processes: int,
    env: dict[str, str],
    latencies: list[float] | None = None,
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """Start ``processes`` bench worker processes; the list their counts of jobs done go to.

    A worker prints its count of jobs done every POLL_S, and may print
    ``latency <seconds>`` lines, which go to ``latencies``.
    """
    workers = [
        subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    counts = [0] * processes
    for index, worker in enumerate(workers):
        threading.Thread(
            target=_follow, args=(worker, counts, index, latencies), daemon=True
        ).start()
    return workers, counts


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then SIGKILL whatever has not exited within 30 s."""
    for process in workers:
        process.terminate()
    for process in workers:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_drained(
    total: int,
    workers: list[subprocess.Popen[bytes]],
    counts: list[int],
    *,
    started: float,
) -> Drained:
    """Follow the jobs done that the workers report until every job is done.

    The workers print their count of jobs done every POLL_S: counting rows in
    the tables instead would load the database being measured. The RSS growth
    is the workers' resident memory from the 10 % mark to the end.
    """
    pids = [worker.pid for worker in workers]
    marks: dict[str, float] = {}
    rss_at_10: int | None = None
    # Generous: a slow configuration (concurrency 1) is a figure, not an error.
    deadline = started + max(300.0, total / 50)
    while True:
        done = sum(counts)
        now = time.perf_counter()
        mark(marks, done, total, now)
        if rss_at_10 is None and "10" in marks:
            rss_at_10 = _rss(pids)
        if done >= total:
            growth = 100 * (_rss(pids) - rss_at_10) / rss_at_10 if rss_at_10 else 0.0
            return Drained(now - started, marks["90"] - marks["10"], growth)
        if now > deadline or not any(worker.poll() is None for worker in workers):
            raise RuntimeError(f"workers finished only {done} of {total} jobs")
        time.sleep(POLL_S)


def paced(count: int, rate: float, action: Callable[[], object]) -> None:
    """Call ``action`` ``count`` times at ``rate`` per second."""
    interval = 1 / rate
    next_at = time.perf_counter()
    for _ in range(count):
        action()
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))


def mark(marks: dict[str, float], done: int, total: int, now: float) -> None:
    """Remember when 10 % and 90 % of the jobs were done."""
    if "10" not in marks and done >= total * 0.1:
        marks["10"] = now
    if "90" not in marks and done >= total * 0.9:
        marks["90"] = now


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile of ``values`` (NaN for none)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _follow(
    worker: subprocess.Popen[bytes],
    counts: list[int],
    index: int,
    latencies: list[float] | None,
) -> None:
    """Keep ``counts[index]`` at the last count a bench worker printed."""
    assert worker.stdout is not None
    for line in worker.stdout:
        with contextlib.suppress(ValueError):
            if line.startswith(b"latency "):
                if latencies is not None:
                    latencies.append(float(line.split()[1]))
            else:
                counts[index] = int(line)


def _rss(pids: list[int]) -> int:
    """Resident memory of these processes in kB (Linux /proc; 0 where unreadable)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total
