"""The threads that run ``def`` job functions, handing results back to the loop in batches.

``loop.run_in_executor`` costs, per job, a concurrent and an asyncio future, a
condition variable, a chained callback and a wake-up of the event loop; at a
few thousand no-op jobs a second that was most of a worker's CPU. Here a job
is one item on a ``queue.SimpleQueue``; the thread that runs it appends its
result to a list and wakes the loop only if the list was empty, so a burst of
jobs finishing together costs the loop one wake-up.

Concurrency is unchanged: each job runs on a thread of its own, and there are
as many threads as jobs handed in and not yet collected (never more than
``size``, created as needed). A thread free again takes the next queued job,
so a burst of short jobs may run one after the other on one thread while the
others sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("orchestra.worker")

T = TypeVar("T")


class ThreadRunner(Generic[T]):
    """Runs calls on up to ``size`` daemon threads; ``on_done`` gets their results in batches.

    ``on_done`` is called on the event loop of the caller of :meth:`submit`
    (``loop``). A call must not raise: what it raises is logged and lost.
    """

    def __init__(
        self,
        size: int,
        *,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[list[T]], None],
        name: str,
    ) -> None:
        self._size = size
        self._loop = loop
        self._on_done = on_done
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], T] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._done: list[T] = []
        #: Handed in and not yet given to on_done (read and written on the loop).
        self._outstanding = 0
        self._closed = False

    def submit(self, call: Callable[[], T]) -> None:
        """Run ``call`` on a job thread (from the loop only)."""
        if self._closed:
            raise RuntimeError("the thread runner is closed")
        self._outstanding += 1
        if self._outstanding > len(self._threads) and len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._work,
                name=f"{self._name}-{len(self._threads) + 1}",
                daemon=True,  # a job that ignores the stop must not hold the process
            )
            thread.start()
            self._threads.append(thread)
        self._queue.put(call)

    def close(self) -> None:
        """Let idle threads end; threads still running a job end when it returns."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            try:
                result = call()
            except BaseException:  # a contract breach of the caller: log, keep the thread
                logger.exception("%s: a job thread's call raised", self._name)
                continue
            with self._lock:
                wake = not self._done
                self._done.append(result)
            if wake:
                # Only the first result of a batch wakes the loop. It is closed
                # only after the worker stopped, when results no longer matter.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._collect)

    def _collect(self) -> None:
        with self._lock:
            batch, self._done = self._done, []
        self._outstanding -= len(batch)
        if batch:
            self._on_done(batch)
