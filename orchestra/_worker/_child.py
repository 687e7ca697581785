"""What runs in a worker's child process, and the messages it exchanges with its parent.

A child (:class:`~._children.ChildPool` starts it with the ``spawn`` method)
imports only this module and what the job function needs: it receives a
pickled call, runs the function, and sends back a :class:`ChildReply` with the
return value as JSON text or the error as a string. Nothing else crosses the
pipe: an exception object may not pickle, or not unpickle, and must never take
the parent down.

While a call runs, the child may ask its parent what only the parent can read
(the child has no database connection): a :class:`ChildQuestion` on the same
pipe, answered by a :class:`ChildAnswer` before the call goes on. So far one
question exists: the rows of the job's dependency results
(``ctx.dependency_results()``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing.connection
import multiprocessing.synchronize
import pickle
import signal
import threading
import time
import types
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from orchestra import _callables, _converter, _results
from orchestra._checks import encode_progress
from orchestra._snooze import Snooze
from orchestra._worker._describe import describe, format_traceback, storable
from orchestra.errors import OrchestraError

#: Errors and tracebacks are cut to this size in the child: the worker cuts them
#: again to what it stores, this only bounds what crosses the pipe (a job must
#: not be able to block the event loop with a 100 MB exception message).
ERROR_MAX_CHARS: Final = 16_000
TRACEBACK_MAX_CHARS: Final = 64_000

# Frames on the pipe. Parent to child: a pickled call, or STOP. Child to
# parent: READY once after start-up, then one pickled ChildReply per call.
# During a call the child may send pickled ChildQuestions, each answered by
# one pickled ChildAnswer before anything else is sent either way, and
# PROGRESS frames (the prefix, then a progress value's JSON text in UTF-8),
# which the parent takes without answering. A pickle never starts with it.
READY: Final = b"ready"
STOP: Final = b""
PROGRESS: Final = b"progress:"
#: The least time between two PROGRESS frames of one call: a job reporting in
#: a tight loop must not flood the pipe. The value held back last goes with
#: the reply (ChildReply.progress).
PROGRESS_INTERVAL_S: Final = 0.5


@attrs.frozen
class ChildRequest:
    """One attempt to run in a child process.

    Attributes:
        function: the job function; pickled by reference, so a module-level
            function (or picklable callable) the child can import.
        payload_type: the definition's payload type, pickled by reference; None
            for plain JSON.
        payload: the stored payload's JSON text, as the claim returned it; the
            child decodes it and structures it into ``payload_type``.
        arity: how many of ``(payload, ctx)`` the function takes: 0, 1 or 2.
        job_id: the job's id.
        attempt: this attempt's number, from 1.
        max_attempts: the job's attempt budget.
        definition_name: the name of the job's definition.
        tags: the tags the job was deferred with.
        meta: the JSON text of its metadata.
    """

    function: Callable[..., Any]
    payload_type: Any
    payload: str
    arity: int = attrs.field(validator=attrs.validators.in_((0, 1, 2)))
    job_id: int
    attempt: int
    max_attempts: int
    definition_name: str
    tags: tuple[str, ...] = ()
    meta: str = "{}"


@attrs.frozen
class ChildReply:
    """How a call in a child process ended.

    Attributes:
        ok: the function returned and its value was converted to JSON.
        result: the return value as JSON text, when ``ok``.
        error: one line such as ``"ValueError: boom"``, when not ``ok``.
        traceback: the formatted traceback of the job function's exception, if any.
        crashed: the child process died during the call (``error`` says how:
            exit code or signal).
        timed_out: the call ran past its ``timeout_s`` and the child was terminated.
        payload_invalid: the stored payload did not structure into the payload type.
        snooze_s: the function snoozed (raised or returned a ``Snooze``) for
            this many seconds (``ok`` is False: there is no result).
        progress: the last progress value the call reported and had not sent
            yet (held back by the rate limit), as JSON text.
    """

    ok: bool
    result: str | None = None
    error: str | None = None
    traceback: str | None = None
    crashed: bool = False
    timed_out: bool = False
    payload_invalid: bool = False
    snooze_s: float | None = None
    progress: str | None = None


@attrs.frozen
class ChildQuestion:
    """What a job function in a child process asks its parent, during its call.

    Attributes:
        kind: ``dependency_results``: the rows of ``job_dependency_results`` for
            the job of the call.
    """

    kind: str = attrs.field(validator=attrs.validators.in_(("dependency_results",)))


@attrs.frozen
class ChildAnswer:
    """The parent's answer to a :class:`ChildQuestion`.

    Attributes:
        rows: the rows asked for (plain tuples of ints, strings and None).
        error: why the parent could not answer, as one line; ``rows`` is then empty.
    """

    rows: tuple[tuple[Any, ...], ...] = ()
    error: str | None = None


#: How a child's job function asks its parent: sends a question, waits for the answer.
Ask = Callable[[ChildQuestion], ChildAnswer]


class ChildJobContext:
    """The :class:`~orchestra.JobContext` of a job function run in a child process.

    Same attribute names as ``JobContext``, with one difference: there is no
    JobDefinition object in the child, so ``definition`` is the definition's
    *name* (a ``str``), also available as ``definition_name``.

    Attributes:
        job_id: the job's id.
        attempt: this attempt's number, from 1.
        max_attempts: the job's attempt budget.
        definition: the name of the job's definition (not a JobDefinition).
        definition_name: the same name.
        tags: the tags the job was deferred with, a tuple.
        logger: a logger that tags every record with the job id, definition and
            attempt. The child configures no logging: records reach Python's
            last-resort handler (warnings and above, on the inherited stderr)
            unless the job's module configures logging itself.
    """

    __slots__ = (
        "_ask",
        "_meta",
        "_meta_text",
        "_progress",
        "_stop",
        "attempt",
        "definition",
        "job_id",
        "logger",
        "max_attempts",
        "tags",
    )

    def __init__(
        self,
        *,
        job_id: int,
        attempt: int,
        max_attempts: int,
        definition: str,
        stop: multiprocessing.synchronize.Event,
        ask: Ask | None = None,
        tags: tuple[str, ...] = (),
        meta: str = "{}",
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.definition = definition
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"orchestra.job.{definition}"),
            {"job_id": job_id, "definition": definition, "attempt": attempt},
        )
        self._stop = stop
        self._ask = ask
        self.tags = tuple(tags)
        self._meta_text = meta
        self._meta: Mapping[str, Any] | None = None
        self._progress = progress

    @property
    def meta(self) -> Mapping[str, Any]:
        """The metadata the job was deferred with, read-only (as
        :attr:`orchestra.JobContext.meta`)."""
        if self._meta is None:
            value = _converter.load_stored(self._meta_text)
            self._meta = types.MappingProxyType(value if isinstance(value, dict) else {})
        return self._meta

    def set_progress(self, value: float | Mapping[str, Any]) -> None:
        """Report how far this attempt got (as :meth:`orchestra.JobContext.set_progress`):
        sent to the worker at most every 0.5 s, the last value with the call's end."""
        text = encode_progress(value)
        if self._progress is not None:
            self._progress(text)

    @property
    def definition_name(self) -> str:
        """The name of the job's definition (same as ``definition``)."""
        return self.definition

    @property
    def should_stop(self) -> bool:
        """True once the worker is shutting down: a long job should wrap up and return or raise.

        (A cancel of the job does not set it: the child running it is terminated.)
        """
        return self._stop.is_set()

    def snooze(self, seconds: float | dt.timedelta) -> Snooze:
        """What to return to run this job again in ``seconds``, without spending an
        attempt (as :meth:`orchestra.JobContext.snooze`)."""
        return Snooze(seconds)

    def dependency_results(self, *, as_type: Any = None) -> dict[int, Any]:
        """The results of the jobs this one depends on, by id (as
        :meth:`orchestra.JobContext.dependency_results`): the parent reads them
        and the child structures them into ``as_type``."""
        if self._ask is None:
            raise OrchestraError("this context cannot reach the worker that runs the job")
        answer = self._ask(ChildQuestion("dependency_results"))
        if answer.error is not None:
            raise OrchestraError(
                f"the worker could not read the results of job {self.job_id}'s dependencies: "
                f"{answer.error}"
            )
        return _results.dependency_results_from_rows(self.job_id, answer.rows, as_type)

    async def dependency_results_async(self, *, as_type: Any = None) -> dict[int, Any]:
        """Async twin of :meth:`dependency_results` (the question waits on a thread)."""
        return await asyncio.to_thread(self.dependency_results, as_type=as_type)


def child_main(
    conn: multiprocessing.connection.Connection, stop: multiprocessing.synchronize.Event
) -> None:
    """Entry point of a child: serve calls from ``conn`` until STOP or the parent is gone."""
    # Ctrl-C in a terminal reaches the whole process group: the parent handles
    # it (graceful stop) and stops the children itself, so they must not die
    # in the middle of a job on their own. SIGTERM is left alone: it is how the
    # parent terminates a stuck child. Service managers must therefore send
    # SIGTERM to the worker only (systemd: KillMode=mixed; Kubernetes does).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Questions and progress frames are sent from the job's threads: one
    # frame at a time on the pipe.
    sending = threading.Lock()
    ask = _asker(conn, sending)
    try:
        conn.send_bytes(READY)
        while True:
            try:
                message = conn.recv_bytes()
            except EOFError:
                return  # the parent is gone (it never lets a child outlive it on purpose)
            if message == STOP:
                return
            progress = ProgressSender(conn, sending)
            reply = _serve(message, stop, ask, progress)
            # No progress frame after the reply: the next call's would take it.
            last = progress.close()
            if last is not None:
                reply = attrs.evolve(reply, progress=last)
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent went away while we were replying: nobody to tell
    finally:
        conn.close()


class ProgressSender:
    """Sends one call's progress to the parent: at most one PROGRESS frame per
    :data:`PROGRESS_INTERVAL_S`; a value that comes sooner waits, replaced by
    any later one, and the last one waiting goes with the reply (:meth:`close`)."""

    def __init__(
        self,
        conn: multiprocessing.connection.Connection,
        sending: threading.Lock,
        interval_s: float = PROGRESS_INTERVAL_S,
    ) -> None:
        self._conn = conn
        self._sending = sending
        self._interval_s = interval_s
        # Held while a frame is sent, so that close() waits for it.
        self._lock = threading.Lock()
        self._sent_at: float | None = None
        self._waiting: str | None = None
        self._closed = False

    def __call__(self, text: str) -> None:
        with self._lock:
            if self._closed:
                return  # a thread of the job reporting after its call ended
            now = time.monotonic()
            if self._sent_at is not None and now - self._sent_at < self._interval_s:
                self._waiting = text
                return
            self._sent_at, self._waiting = now, None
            with self._sending:
                self._conn.send_bytes(PROGRESS + text.encode("utf-8"))

    def close(self) -> str | None:
        """Send nothing more; returns the value still waiting, if any."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, None
            return waiting


def _asker(conn: multiprocessing.connection.Connection, lock: threading.Lock) -> Ask:
    """How the job functions of this child ask the parent, over ``conn``.

    One frame at a time (``lock``, shared with the progress frames): an
    ``async def`` job may ask from several threads at once, and the frames of
    two questions must not mix.
    """

    def ask(question: ChildQuestion) -> ChildAnswer:
        with lock:
            conn.send_bytes(pickle.dumps(question, protocol=pickle.HIGHEST_PROTOCOL))
            frame = conn.recv_bytes()  # EOFError: the parent is gone
        answer = pickle.loads(frame)  # noqa: S301 (our own parent's frame)
        if not isinstance(answer, ChildAnswer):
            raise OrchestraError(f"the worker sent an unexpected {type(answer).__name__}")
        return answer

    return ask


def _serve(
    message: bytes,
    stop: multiprocessing.synchronize.Event,
    ask: Ask,
    progress: Callable[[str], None] | None = None,
) -> ChildReply:
    """Run one call; every failure becomes a ChildReply (the child must survive it)."""
    try:
        call: dict[str, Any] = pickle.loads(message)  # noqa: S301 (our own parent's frame)
    except BaseException as exc:  # a bug, not a job failure: report it rather than die
        return ChildReply(
            ok=False, error=storable(f"bad call frame: {describe(exc)}", ERROR_MAX_CHARS)
        )
    name: str = call["definition_name"]
    try:
        function = pickle.loads(call["function"])  # noqa: S301
    except BaseException as exc:
        return ChildReply(
            ok=False,
            error=storable(
                f"the job function {call['function_label']} of {name!r} cannot be imported in "
                f"the child process ({describe(exc)}); Worker(processes=N) needs module-level "
                "functions that a child process can import",
                ERROR_MAX_CHARS,
            ),
            traceback=_traceback(exc),
        )
    try:
        payload_type = pickle.loads(call["payload_type"])  # noqa: S301
    except BaseException as exc:
        return ChildReply(
            ok=False,
            error=storable(
                f"the payload type of {name!r} cannot be imported in the child process "
                f"({describe(exc)}); Worker(processes=N) needs module-level types",
                ERROR_MAX_CHARS,
            ),
            traceback=_traceback(exc),
        )
    try:
        payload = _converter.decode_stored_payload(call["payload"], payload_type)
    except Exception as exc:
        # Same wording as the worker's in-process path, so events read alike.
        return ChildReply(
            ok=False,
            payload_invalid=True,
            error=storable(
                f"PayloadError: stored payload cannot be read: {exc}"
                if isinstance(exc, _converter.UnreadablePayloadError)
                else f"PayloadError: stored payload does not fit {payload_type!r}: "
                f"{_converter.describe_structure_error(exc)}",
                ERROR_MAX_CHARS,
            ),
        )
    ctx = ChildJobContext(
        job_id=call["job_id"],
        attempt=call["attempt"],
        max_attempts=call["max_attempts"],
        definition=name,
        stop=stop,
        ask=ask,
        tags=tuple(call.get("tags", ())),
        meta=call.get("meta", "{}"),
        progress=progress,
    )
    try:
        value = _invoke(function, call["arity"], payload, ctx)
        if isinstance(value, Snooze):  # return ctx.snooze(...)
            return ChildReply(ok=False, snooze_s=value.seconds)
        result = _converter.dumps(value, what="the return value", owner=name)
    except Snooze as snooze:
        return ChildReply(ok=False, snooze_s=snooze.seconds)
    # BaseException: SystemExit, an asyncio CancelledError or GeneratorExit out
    # of a job are the job's failure, and must not end the child.
    except BaseException as exc:
        return ChildReply(
            ok=False,
            error=storable(describe(exc), ERROR_MAX_CHARS),
            traceback=_traceback(exc),
        )
    return ChildReply(ok=True, result=result)


def _invoke(function: Callable[..., Any], arity: int, payload: Any, ctx: ChildJobContext) -> Any:
    if _callables.is_async(function):
        # A fresh loop per call: nothing of one job's loop leaks into the next.
        return asyncio.run(_callables.call(function, arity, payload, ctx))
    return _callables.call(function, arity, payload, ctx)


def _traceback(exc: BaseException) -> str:
    return storable(format_traceback(exc), TRACEBACK_MAX_CHARS)
