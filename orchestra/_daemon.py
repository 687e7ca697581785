"""What every daemon shares: run/start/stop/join (and async twins), signals, events.

A daemon's work is one coroutine, ``_main``. ``run()`` runs it on a fresh event
loop in the calling thread, ``start()`` on a fresh loop in a background thread,
and ``run_async()``/``start_async()`` on the caller's loop. ``stop()`` may be
called from any thread (or a signal handler): the first call asks for a
graceful stop, a second one for an immediate stop.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Iterable

from orchestra import events
from orchestra._event_origin import EventOrigin
from orchestra._names import check_printable
from orchestra.errors import ConfigurationError, OrchestraError

logger = logging.getLogger("orchestra")
_daemon_ids = itertools.count(1)


class Daemon(abc.ABC):
    """Base of Worker and Orchestrator."""

    role: events.Role

    def __init__(
        self,
        *,
        name: str,
        event_handler: events.EventHandler | Iterable[events.EventHandler] | None,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ConfigurationError("name", "must be a non-empty string of at most 128 characters")
        # The name starts every log line of the daemon: a line break in it would forge lines.
        self.name = check_printable(name, "name")
        self.daemon_id = next(_daemon_ids)
        self.daemon_name = f"{name}-{self.role}"
        self.host = socket.gethostname()
        self.pid = os.getpid()
        #: Presented with this daemon's heartbeats and deregistration; only its
        #: hash is in the database (no other process can act as this daemon).
        self.secret = secrets.token_hex(16)
        self._origin = EventOrigin(
            daemon_id=self.daemon_id, daemon_name=self.daemon_name, role=self.role
        )
        self._handlers = events.normalize_handlers(event_handler)
        #: Whether any handler is attached: a hot path may skip building its
        #: events when none is (mypy checks the construction all the same).
        self._wants_events = bool(self._handlers)
        self._stop_event = threading.Event()  # read by JobContext.should_stop from any thread
        self._force_event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._started = False

    # -- events -------------------------------------------------------------

    def _emit(self, event: events.Event, /) -> None:
        """Hand a built event to the handlers.

        Build it at the call site, so that mypy checks every field:
        ``self._emit(events.DaemonStarted(**self._origin.header(), host=h, pid=p))``.
        """
        events.dispatch(self._handlers, event)

    # -- lifecycle ------------------------------------------------------------

    @abc.abstractmethod
    async def _main(self) -> None:
        """The daemon's work, until a stop is requested."""

    @abc.abstractmethod
    def _in_flight(self) -> int:
        """How much work is under way (for DaemonStopRequested)."""

    @property
    def stopping(self) -> bool:
        """True once a stop has been requested."""
        return self._stop_event.is_set()

    def stop(self, reason: str = "stop()") -> None:
        """Ask the daemon to stop; thread-safe and non-blocking. A second call forces it."""
        if self._stop_event.is_set():
            if not self._force_event.is_set():
                self._force_event.set()
                logger.warning("%s: second stop request, stopping now", self.daemon_name)
            self._poke()
            return
        self._stop_event.set()
        self._emit(
            events.DaemonStopRequested(
                **self._origin.header(), reason=reason, in_flight=self._in_flight()
            )
        )
        self._poke()

    def _poke(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wakeup.set()
        else:
            loop.call_soon_threadsafe(wakeup.set)

    async def run_async(self, *, install_signal_handlers: bool = False) -> None:
        """Run until stopped, on the current event loop."""
        if self._started:
            raise OrchestraError(f"{self.daemon_name} was already started; build a new one")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        installed: list[signal.Signals] = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self.stop, signum.name)
                installed.append(signum)
        try:
            await self._main()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            for signum in installed:
                self._loop.remove_signal_handler(signum)
            self._done.set()

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until stopped, blocking; SIGTERM/SIGINT stop it gracefully (main thread only)."""
        asyncio.run(self.run_async(install_signal_handlers=install_signal_handlers))

    def start(self) -> None:
        """Run in a background thread; returns once the daemon is started (or failed to)."""
        ready = threading.Event()

        def target() -> None:
            async def main() -> None:
                self._on_ready = ready.set
                await self.run_async()

            try:
                asyncio.run(main())
            except BaseException as exc:  # reported through join()
                self._error = exc
            finally:
                ready.set()
                self._done.set()

        self._thread = threading.Thread(
            target=target, name=f"orchestra-{self.daemon_name}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._error is not None:
            raise self._error

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the daemon to stop; True if it did. Re-raises the error it died of."""
        finished = self._done.wait(timeout)
        if finished and self._thread is not None:
            self._thread.join()
        if (
            finished
            and self._error is not None
            and not isinstance(self._error, asyncio.CancelledError)
        ):
            raise self._error
        return finished

    def start_async(self) -> asyncio.Task[None]:
        """Run as a task of the current event loop; ``await join_async()`` to wait for it."""
        self._task = asyncio.get_running_loop().create_task(self.run_async())
        return self._task

    async def join_async(self) -> None:
        """Wait for a daemon started with ``start_async``."""
        if self._task is None:
            raise OrchestraError("join_async() needs a daemon started with start_async()")
        await self._task

    def _ready(self) -> None:
        """Called by ``_main`` once started: releases ``start()``."""
        callback = getattr(self, "_on_ready", None)
        if callback is not None:
            callback()

    async def _sleep_or_wake(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` seconds for a poke (or stop); True if poked."""
        assert self._wakeup is not None
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout_s)
        except TimeoutError:
            return False
        finally:
            self._wakeup.clear()
        return True


async def run_together(daemons: list[Daemon]) -> None:
    """Run several daemons on this loop; SIGTERM/SIGINT stop them all (``--role all``)."""
    loop = asyncio.get_running_loop()

    def stop_all(reason: str) -> None:
        for daemon in daemons:
            daemon.stop(reason)

    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_all, signum.name)
            installed.append(signum)
    tasks = [asyncio.create_task(daemon.run_async()) for daemon in daemons]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        if any(task.exception() is not None for task in done):
            # Once, and only the daemons still running: a second stop() would
            # force an immediate stop, and the failed one needs none.
            for daemon, task in zip(daemons, tasks, strict=True):
                if not task.done():
                    daemon.stop("another daemon of this process failed")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
