"""Workers run in threads for the duration of a ``with`` block, stopped and joined after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from orchestra import Worker


@contextlib.contextmanager
def running(worker: Worker, *others: Worker, join_timeout: float = 30) -> Iterator[Worker]:
    """Start ``worker`` (and ``others``); stop all when the block ends, then join them."""
    workers = (worker, *others)
    for each in workers:
        each.start()
    try:
        yield worker
    finally:
        for each in workers:
            each.stop()
        for each in workers:
            each.join(timeout=join_timeout)
