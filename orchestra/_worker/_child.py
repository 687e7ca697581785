"""What runs in a worker's child process, and the messages it exchanges with its parent.

A child (:class:`~._children.ChildPool` starts it with the ``spawn`` method)
imports only this module and what the job function needs: it receives a
pickled call, runs the function, and sends back a :class:`ChildReply` with the
return value as JSON text or the error as a string. Nothing else crosses the
pipe: an exception object may not pickle, or not unpickle, and must never take
the parent down.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing.connection
import multiprocessing.synchronize
import pickle
import signal
from collections.abc import Callable
from typing import Any, Final

import attrs

from orchestra import _callables, _converter
from orchestra._worker._describe import describe, format_traceback, storable

#: Errors and tracebacks are cut to this size in the child: the worker cuts them
#: again to what it stores, this only bounds what crosses the pipe (a job must
#: not be able to block the event loop with a 100 MB exception message).
ERROR_MAX_CHARS: Final = 16_000
TRACEBACK_MAX_CHARS: Final = 64_000

# Frames on the pipe. Parent to child: a pickled call, or STOP. Child to
# parent: READY once after start-up, then one pickled ChildReply per call.
READY: Final = b"ready"
STOP: Final = b""


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
    """

    function: Callable[..., Any]
    payload_type: Any
    payload: str
    arity: int = attrs.field(validator=attrs.validators.in_((0, 1, 2)))
    job_id: int
    attempt: int
    max_attempts: int
    definition_name: str


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
    """

    ok: bool
    result: str | None = None
    error: str | None = None
    traceback: str | None = None
    crashed: bool = False
    timed_out: bool = False
    payload_invalid: bool = False


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
        logger: a logger that tags every record with the job id, definition and
            attempt. The child configures no logging: records reach Python's
            last-resort handler (warnings and above, on the inherited stderr)
            unless the job's module configures logging itself.
    """

    __slots__ = ("_stop", "attempt", "definition", "job_id", "logger", "max_attempts")

    def __init__(
        self,
        *,
        job_id: int,
        attempt: int,
        max_attempts: int,
        definition: str,
        stop: multiprocessing.synchronize.Event,
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

    @property
    def definition_name(self) -> str:
        """The name of the job's definition (same as ``definition``)."""
        return self.definition

    @property
    def should_stop(self) -> bool:
        """True once the worker is shutting down: a long job should wrap up and return or raise."""
        return self._stop.is_set()


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
    try:
        conn.send_bytes(READY)
        while True:
            try:
                message = conn.recv_bytes()
            except EOFError:
                return  # the parent is gone (it never lets a child outlive it on purpose)
            if message == STOP:
                return
            reply = _serve(message, stop)
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent went away while we were replying: nobody to tell
    finally:
        conn.close()


def _serve(message: bytes, stop: multiprocessing.synchronize.Event) -> ChildReply:
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
    )
    try:
        value = _invoke(function, call["arity"], payload, ctx)
        result = _converter.dumps(value, what="the return value", owner=name)
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
