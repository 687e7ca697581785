"""A pool of child processes that run job functions: ``Worker(processes=N)``.

CPU-bound job functions hold the GIL, so a thread pool does not run them in
parallel; this pool runs them in N long-lived child processes. The parent
keeps everything that talks to PostgreSQL; a child only receives a call, runs
the function and sends back JSON text or an error string.

Design notes, each a reason rather than a rule:

* Children are started with the ``spawn`` method, never ``fork``: the worker
  process has threads, an event loop and open database connections, and a
  forked copy of those is undefined behaviour (a lock held by another thread at
  fork time stays held forever in the child). The price is that a job function
  crosses the process boundary *by reference*: it must be a module-level
  function (or a picklable callable) the child can import, and a script that
  starts a worker needs the usual ``if __name__ == "__main__":`` guard because
  the child imports the parent's main module.
* Each child owns one duplex :func:`multiprocessing.Pipe` and serves one call at
  a time; it stays alive between calls, so a call costs a round trip, not a
  process start-up (~0.2 s: the child imports orchestra and the job's module).
* Nothing but bytes, strings, numbers and :class:`ChildReply` crosses the pipe:
  exceptions are turned into strings in the child, because an exception object
  may not pickle (or not unpickle) and must never take the parent down. A job
  function may ask its parent for what only the parent can read (a
  :class:`ChildQuestion`, answered by ``serve``): the child holds no database
  connection, and opening one per call would cost more than the question.
* A child that dies, overruns its timeout or is abandoned by a cancelled call is
  terminated (SIGTERM, then SIGKILL after a grace period) and replaced; no
  other child is touched.
* Children are not ``daemon`` processes: a daemonic process may not start
  processes of its own, and CPU-bound jobs commonly do (``ProcessPoolExecutor``,
  numerical libraries). An ``atexit`` hook kills the children of pools that were
  never closed, so the interpreter never waits on them at exit.

The pool belongs to the event loop that first uses it (its queue and readers
are bound to that loop). It relies on ``loop.add_reader``, which the default
event loops on POSIX (and uvloop) provide; Windows' proactor loop does not.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.synchronize
import pickle
import signal
from collections.abc import Awaitable, Callable
from typing import Final

import attrs

from orchestra._checks import encode_progress, is_int
from orchestra._worker._child import (
    PROGRESS,
    READY,
    STOP,
    ChildAnswer,
    ChildQuestion,
    ChildReply,
    ChildRequest,
    child_main,
)
from orchestra._worker._describe import describe
from orchestra.errors import OrchestraError

logger = logging.getLogger("orchestra.worker.children")

#: How long a terminated child (SIGTERM) may take to exit before it is killed (SIGKILL).
TERMINATE_GRACE_S: Final = 1.0
#: How long a new child may take to import orchestra and say it is ready.
STARTUP_TIMEOUT_S: Final = 60.0

#: How the parent answers the questions of a call's job function (see ChildPool.run).
Serve = Callable[[ChildQuestion], Awaitable[ChildAnswer]]


async def _cannot_serve(question: ChildQuestion) -> ChildAnswer:
    return ChildAnswer(error=f"nothing answers {question.kind!r} here")


class _NotSendableError(Exception):
    """A request that cannot be pickled for a child; the message says why."""


def _label(function: object) -> str:
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    if qualname is None:
        return repr(function)
    return f"{module}.{qualname}" if module else str(qualname)


def _encode(request: ChildRequest) -> bytes:
    """The frame that carries ``request`` to a child, or _NotSendableError with a clear reason.

    The function and the payload type are pickled on their own so that the
    error names the culprit, and so that the child can tell an import failure
    of either apart from a job failure.
    """
    label = _label(request.function)
    owner = request.definition_name
    try:
        function = pickle.dumps(request.function, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise _NotSendableError(
            f"the job function {label} of {owner!r} cannot be sent to a child process "
            f"({describe(exc)}); Worker(processes=N) needs module-level functions (or "
            "picklable callables) that a child process can import: not lambdas, nested "
            "functions or callables holding locks or connections"
        ) from None
    try:
        payload_type = pickle.dumps(request.payload_type, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise _NotSendableError(
            f"the payload type {request.payload_type!r} of {owner!r} cannot be sent to a child "
            f"process ({describe(exc)}); Worker(processes=N) needs module-level types"
        ) from None
    call = {
        "definition_name": owner,
        "function_label": label,
        "function": function,
        "payload_type": payload_type,
        "payload": request.payload,
        "arity": request.arity,
        "job_id": request.job_id,
        "attempt": request.attempt,
        "max_attempts": request.max_attempts,
        "tags": request.tags,
        "meta": request.meta,
    }
    try:
        return pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # the payload should be plain JSON; say so if it is not
        raise _NotSendableError(
            f"the payload of {owner!r} cannot be sent to a child process ({describe(exc)})"
        ) from None


async def _wait_readable(*fds: int) -> None:
    """Wait until one of ``fds`` is readable (data, end of file, or a dead process's sentinel).

    ``loop.add_reader`` rather than a thread per call: a waiting call costs no
    thread (the default executor is shared with DNS look-ups and would starve
    with many long jobs), the process sentinel gives crash detection without
    polling, and timeouts and cancellation are plain asyncio on this coroutine.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    registered: list[int] = []
    try:
        for fd in fds:
            loop.add_reader(fd, wake)
            registered.append(fd)
        await ready
    finally:
        for fd in registered:
            loop.remove_reader(fd)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


@attrs.define(eq=False)
class _Child:
    """One child process and the parent's end of its pipe.

    At any time a child is owned by exactly one of: the idle queue, a ``run``
    call, or a reaper task. Only the owner reads its pipe or waits on its
    sentinel, so no two coroutines register a reader on the same descriptor.
    """

    process: multiprocessing.context.SpawnProcess
    conn: multiprocessing.connection.Connection
    ready: bool = False

    def sentinel_fired(self) -> bool:
        return bool(multiprocessing.connection.wait([self.process.sentinel], timeout=0))

    def exitcode(self) -> int | None:
        """The exit code (negative: the signal), or None while the process lives."""
        if not self.sentinel_fired():
            return None
        # The sentinel fires as the process closes its descriptors on exit;
        # waitpid returns a moment later, so this join does not really block.
        self.process.join()
        return self.process.exitcode

    async def death(self) -> str:
        """How the child died, e.g. ``killed by SIGKILL``, waiting a moment for its exit.

        Its pipe may report end of file just before its sentinel fires (both
        close as it exits), hence the short wait.
        """
        await _wait_exit(self, asyncio.get_running_loop().time() + TERMINATE_GRACE_S)
        return _describe_exit(self.exitcode())


class ChildPool:
    """N child processes that run job functions, one call per child at a time.

    Args:
        size: how many children run calls at once (>= 1).
        name: prefix of the children's process names (``<name>-child-<n>``).

    Children start on :meth:`start` (or on the first :meth:`run`). Calls beyond
    ``size`` wait for a free child. :meth:`close` stops them all.
    """

    def __init__(self, size: int, *, name: str = "orchestra") -> None:
        if not is_int(size) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        self._size = size
        self._name = name
        self._ctx = multiprocessing.get_context("spawn")
        # Created on start: a multiprocessing Event starts the resource tracker.
        self._stop: multiprocessing.synchronize.Event | None = None
        # Idle children, in the order they became free; None wakes callers
        # waiting for a child once the pool is closed (each puts it back).
        self._idle: asyncio.Queue[_Child | None] = asyncio.Queue()
        self._busy: set[_Child] = set()
        self._retiring: set[_Child] = set()  # handed to a reaper task, not joined yet
        self._released = asyncio.Event()  # set whenever a busy child is handed back
        self._children: set[_Child] = set()  # every child not yet joined
        self._reapers: set[asyncio.Task[None]] = set()
        self._spawned = 0
        self._started = False
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._close_deadline: float | None = None  # loop time by which children must stop

    @property
    def size(self) -> int:
        """How many children run calls at once."""
        return self._size

    @property
    def pids(self) -> list[int]:
        """The process ids of the pool's children (idle or busy, not those being stopped)."""
        live = self._children - self._retiring
        return sorted(c.process.pid for c in live if c.process.pid is not None)

    def start(self) -> None:
        """Start the children (idempotent). They become ready in the background."""
        if self._closing:
            raise RuntimeError("the child pool is closed")
        if self._started:
            return
        self._started = True
        for _ in range(self._size):
            self._idle.put_nowait(self._spawn())

    def request_stop(self) -> None:
        """Make ``ctx.should_stop`` true in every child, now and in children started later."""
        self._stop_event().set()

    async def run(
        self,
        request: ChildRequest,
        *,
        timeout_s: float | None,
        serve: Serve | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> ChildReply:
        """Run ``request`` in a free child, waiting for one if all are busy.

        Args:
            request: the call.
            timeout_s: how long the call may run once a child has it; the child
                is then terminated and replaced and the reply has ``timed_out``.
                None: no limit. The time spent answering questions counts.
            serve: answers the questions the job function asks during the
                call (its dependencies' results); what it raises is sent
                back as the answer's error. None: every question is answered
                with an error.
            on_progress: receives the progress values the job function
                reports during the call (JSON text; at most one every 0.5 s,
                the child's rate limit; the last one held back comes with the
                reply).

        Returns:
            the reply; a failure of any kind (the function raised, the payload
            did not structure, the function cannot be sent, the child died or
            timed out) is a reply with ``ok=False``, never an exception.

        Raises:
            RuntimeError: the pool is closed.
            asyncio.CancelledError: the call was cancelled; its child is terminated.
        """
        if self._closing:
            raise RuntimeError("the child pool is closed")
        try:
            message = _encode(request)
        except _NotSendableError as exc:
            return ChildReply(ok=False, error=str(exc))
        self.start()
        child = await self._checkout()
        try:
            reply, healthy = await self._call(
                child, message, timeout_s, serve or _cannot_serve, on_progress
            )
        except BaseException:
            # Cancelled (the worker stops past its grace period) or a bug: the
            # child may be in the middle of the call, so it cannot be reused.
            # Terminate it in the background and re-raise at once.
            self._checkin(child, healthy=False)
            raise
        reaper = self._checkin(child, healthy=healthy)
        if reaper is not None and not healthy:
            # The attempt is over only once its process is: a retry must not
            # overlap with a timed-out attempt still winding down.
            await asyncio.shield(reaper)
        return reply

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop every child; idempotent.

        Idle children get a stop message and exit on their own. Busy children
        see ``should_stop`` and have until ``timeout_s`` to finish their call;
        the rest are terminated (SIGTERM, then SIGKILL), and their calls get a
        ``crashed`` reply. Returns once every child has been joined.
        """
        if self._closed is not None:
            await self._closed.wait()
            return
        self._closed = asyncio.Event()
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = self._close_deadline = loop.time() + timeout_s
        try:
            if self._started:
                self._stop_event().set()
            while not self._idle.empty():
                child = self._idle.get_nowait()
                if child is not None:
                    self._retire(child, graceful=True, deadline=deadline)
            # A busy child handed back from now on is retired by _checkin.
            await self._wait_busy(deadline)
            if self._busy:
                for child in self._busy:
                    _signal(child, signal.SIGTERM)
                await self._wait_busy(loop.time() + TERMINATE_GRACE_S)
            if self._busy:
                for child in self._busy:
                    _signal(child, signal.SIGKILL)
                await self._wait_busy(None)
            while self._reapers:
                await asyncio.gather(*self._reapers, return_exceptions=True)
        finally:
            self._idle.put_nowait(None)  # wake any run() still waiting for a child
            self._closed.set()

    # ----------------------------------------------------------------- internals

    def _stop_event(self) -> multiprocessing.synchronize.Event:
        if self._stop is None:
            self._stop = self._ctx.Event()
        return self._stop

    def _spawn(self) -> _Child:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        self._spawned += 1
        process = self._ctx.Process(
            target=child_main,
            args=(child_conn, self._stop_event()),
            name=f"{self._name}-child-{self._spawned}",
            daemon=False,
        )
        try:
            process.start()
        except BaseException:
            parent_conn.close()
            raise
        finally:
            # The child has its own copy now. Keeping ours open would hide the
            # child's death: reading our end would never see end of file.
            child_conn.close()
        child = _Child(process, parent_conn)
        self._children.add(child)
        _UNJOINED.add(child)
        logger.debug("started child process %s (pid %s)", process.name, process.pid)
        return child

    async def _checkout(self) -> _Child:
        while True:
            child = await self._idle.get()
            if child is None:
                self._idle.put_nowait(None)  # pass the wake-up on to the next waiter
                raise RuntimeError("the child pool is closed")
            if child.sentinel_fired():
                # Died while idle (OOM killer, an operator): not this call's
                # fault. Replace it and take the next free child.
                logger.warning(
                    "child process %s (pid %s) died while idle; replacing it",
                    child.process.name,
                    child.process.pid,
                )
                self._retire(child, graceful=False)
                continue
            self._busy.add(child)
            return child

    def _checkin(self, child: _Child, *, healthy: bool) -> asyncio.Task[None] | None:
        """Hand a child back after a call: to the idle queue, or to a reaper."""
        self._busy.discard(child)
        self._released.set()
        if healthy and not self._closing:
            self._idle.put_nowait(child)
            return None
        return self._retire(child, graceful=healthy, deadline=self._close_deadline)

    def _retire(
        self, child: _Child, *, graceful: bool, deadline: float | None = None
    ) -> asyncio.Task[None]:
        """Stop ``child`` in the background, and start its replacement unless closing."""
        self._retiring.add(child)
        task = asyncio.get_running_loop().create_task(self._reap(child, graceful, deadline))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)
        if not self._closing:
            self._idle.put_nowait(self._spawn())
        return task

    async def _reap(self, child: _Child, graceful: bool, deadline: float | None) -> None:
        """Stop a child: STOP if ``graceful``, else (or past ``deadline``) SIGTERM, then SIGKILL."""
        loop = asyncio.get_running_loop()
        try:
            if graceful:
                with contextlib.suppress(OSError):
                    child.conn.send_bytes(STOP)
                await _wait_exit(child, deadline if deadline is not None else loop.time() + 5.0)
            if not child.sentinel_fired():
                _signal(child, signal.SIGTERM)
                await _wait_exit(child, loop.time() + TERMINATE_GRACE_S)
            if not child.sentinel_fired():
                logger.warning(
                    "child process %s (pid %s) ignored SIGTERM; killing it",
                    child.process.name,
                    child.process.pid,
                )
                _signal(child, signal.SIGKILL)
                await _wait_exit(child, None)
        finally:
            child.conn.close()
            # Forget it only once joined; otherwise (this task was cancelled with
            # its loop) the exit hook still has it to kill.
            if child.exitcode() is not None:
                child.process.close()
                self._children.discard(child)
                self._retiring.discard(child)
                _UNJOINED.discard(child)

    async def _wait_busy(self, deadline: float | None) -> None:
        """Wait until no call holds a child, or until ``deadline`` (loop time)."""
        while self._busy:
            self._released.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._released.wait()
            except TimeoutError:
                return

    async def _call(
        self,
        child: _Child,
        message: bytes,
        timeout_s: float | None,
        serve: Serve,
        on_progress: Callable[[str], None] | None = None,
    ) -> tuple[ChildReply, bool]:
        """Run one call on ``child``; the bool says whether the child can serve another."""
        fds = (child.conn.fileno(), child.process.sentinel)
        if not child.ready:
            # Start-up (importing orchestra and the job's module) is not part of
            # the attempt: it is waited for outside ``timeout_s``.
            try:
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    await _wait_readable(*fds)
            except TimeoutError:
                return self._crash(f"the child process did not start within {STARTUP_TIMEOUT_S} s")
            frame = _receive(child)
            if frame != READY:
                death = await child.death()
                return self._crash(f"the child process died during start-up ({death})")
            child.ready = True
        try:
            # A ready child is blocked reading its pipe, so this write drains at
            # memory speed even for a payload larger than the socket buffer.
            child.conn.send_bytes(message)
        except OSError:
            return self._crash(f"the child process died ({await child.death()})")
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await _wait_readable(*fds)
                    frame = _receive(child)
                    if frame is None:
                        break
                    if frame.startswith(PROGRESS):  # no answer: the call goes on
                        _forward_progress(frame, on_progress)
                        continue
                    try:
                        reply = pickle.loads(frame)  # noqa: S301 (our own child's frame)
                    except Exception as exc:
                        return self._crash(
                            f"the child process sent an unreadable reply ({describe(exc)})"
                        )
                    if not isinstance(reply, ChildQuestion):
                        break
                    # The job function waits for the answer: the call goes on after it.
                    if not await self._answer(child, reply, serve):
                        frame = None
                        break
        except TimeoutError:
            return ChildReply(
                ok=False,
                timed_out=True,
                error=f"attempt timed out after {float(timeout_s or 0)} s",
            ), False
        if frame is None:
            death = await child.death()
            closing = " while the pool was closing" if self._closing else ""
            return self._crash(f"the child process died ({death}){closing}")
        if not isinstance(reply, ChildReply):
            return self._crash(f"the child process sent an unexpected {type(reply).__name__}")
        return reply, True

    async def _answer(self, child: _Child, question: ChildQuestion, serve: Serve) -> bool:
        """Answer a question of ``child``'s job function; False if the child is gone."""
        try:
            answer = await serve(question)
        except Exception as exc:  # the job's question failed, not the call
            answer = ChildAnswer(error=describe(exc))
        try:
            frame = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # rows are plain values; say so if they are not
            frame = pickle.dumps(ChildAnswer(error=f"unpicklable answer ({describe(exc)})"))
        try:
            # The child is blocked reading its end, so this drains at memory speed.
            child.conn.send_bytes(frame)
        except OSError:
            return False
        return True

    def _crash(self, error: str) -> tuple[ChildReply, bool]:
        logger.warning("%s", error)
        return ChildReply(ok=False, crashed=True, error=error), False


def _forward_progress(frame: bytes, on_progress: Callable[[str], None] | None) -> None:
    """Hand a PROGRESS frame's value on, checked again: one value the database
    would refuse must not fail the progress writes of every other job."""
    if on_progress is None:
        return
    try:
        text = encode_progress(json.loads(frame[len(PROGRESS) :].decode("utf-8")))
    except (ValueError, RecursionError, OrchestraError):
        logger.warning("a child process sent a progress value that is not one; dropped")
        return
    on_progress(text)


def _receive(child: _Child) -> bytes | None:
    """The next frame from a child whose pipe or sentinel is readable; None if it died.

    Only called once the pipe is readable: the child writes a whole frame at
    once, so reading the rest of it takes as long as copying it, and a child
    that dies mid-frame gives end of file rather than a hang.
    """
    try:
        if not child.conn.poll():
            return None  # only the sentinel fired: the process is gone
        return child.conn.recv_bytes()
    except (EOFError, OSError):
        return None


async def _wait_exit(child: _Child, deadline: float | None) -> None:
    """Wait for the child's sentinel until ``deadline`` (loop time; None: forever)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await _wait_readable(child.process.sentinel)


def _signal(child: _Child, signum: signal.Signals) -> None:
    # ProcessLookupError: it died in the meantime, which is what we wanted.
    with contextlib.suppress(ProcessLookupError):
        if signum == signal.SIGKILL:
            child.process.kill()
        else:
            child.process.terminate()


# Children of pools never closed (an exception skipped close(), the loop was torn
# down) must not outlive the parent, nor make the interpreter wait for them at
# exit: multiprocessing's own exit hook joins non-daemonic children, and a busy
# one may run for hours. Hooks run last registered first, and multiprocessing.util
# (imported by multiprocessing.connection above) registered its hook already, so
# this one runs before it.
_UNJOINED: set[_Child] = set()


def _kill_leftover_children() -> None:
    for child in list(_UNJOINED):
        process = child.process
        with contextlib.suppress(Exception):
            if process.exitcode is None:
                process.kill()
            process.join(TERMINATE_GRACE_S)


atexit.register(_kill_leftover_children)
