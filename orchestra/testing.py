"""Helpers for testing code that uses orchestra (and for orchestra's own tests).

* :class:`EventRecorder` is an event handler that keeps every event and lets a
  test wait for one, with a deadline, instead of sleeping.
* :func:`wait_until` polls a condition until it holds or a deadline passes.
* :func:`run_until_empty` runs a worker until its channel has no runnable job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from orchestra import events
from orchestra._config import Config
from orchestra._worker import Worker

E = TypeVar("E", bound=events.Event)


class EventRecorder:
    """An event handler that records events; thread-safe."""

    def __init__(self) -> None:
        self._events: list[events.Event] = []
        self._changed = threading.Condition()

    def __call__(self, event: events.Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    @property
    def events(self) -> list[events.Event]:
        """A copy of every event recorded so far, in order."""
        with self._changed:
            return list(self._events)

    def of_type(self, event_type: type[E]) -> list[E]:
        """The recorded events that are instances of ``event_type``."""
        return [e for e in self.events if isinstance(e, event_type)]

    def wait_for(
        self,
        event_type: type[E],
        predicate: Callable[[E], bool] = lambda _: True,
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[E]:
        """Wait until ``count`` events of ``event_type`` match ``predicate``; return them.

        Raises TimeoutError (with what was seen) when the deadline passes.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [e for e in self._events if isinstance(e, event_type) and predicate(e)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    kinds = [type(e).__name__ for e in self._events[-20:]]
                    raise TimeoutError(
                        f"waited {timeout} s for {count} {event_type.__name__}, saw "
                        f"{len(matching)}; last events: {kinds}"
                    )
                self._changed.wait(remaining)


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Poll ``condition`` until it returns something truthy; return that value.

    Raises TimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def runnable_jobs(config: Config, channel: str = "_default") -> int:
    """How many jobs of ``channel`` are available now, running, or waiting on dependencies."""
    with config.connection() as conn:
        row = conn.execute(config.queries["job_count_unfinished"], {"channel": channel}).fetchone()
    return int(row[0]) if row else 0


def run_until_empty(
    config: Config, *, channel: str = "_default", concurrency: int = 1, timeout: float = 60.0
) -> Worker:
    """Run a worker in a thread until ``channel`` has no unfinished job due now; return it."""
    worker = Worker(
        config, channel=channel, concurrency=concurrency, name="testing", process_interval_ms=50
    )
    worker.start()
    try:
        wait_until(
            lambda: runnable_jobs(config, channel) == 0,
            timeout=timeout,
            message=f"channel {channel!r} still has runnable jobs after {timeout} s",
        )
    finally:
        worker.stop()
        worker.join()
    return worker
