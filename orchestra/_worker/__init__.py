"""The worker daemon: producer, executor, lane statements, heartbeat, LISTEN."""

from orchestra._worker._report import WorkerStats
from orchestra._worker._worker import Worker

__all__ = ["Worker", "WorkerStats"]
