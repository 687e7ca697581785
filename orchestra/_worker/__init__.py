"""The worker daemon (claim loop, executor, batched acknowledgements, LISTEN)."""

from orchestra._worker._worker import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
