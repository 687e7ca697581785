"""One attempt of a claimed job: the claimed row, and the Finish that records how it ended.

Every constructor here is a plain function of the claimed row and the
definition, so that a sync attempt can run whole in a job thread (decode the
payload, call the function, encode the return value) and hand the event loop a
finished record instead of waking it per step (:mod:`._executor` runs them).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any, Literal

import attrs

from orchestra import _converter
from orchestra._definition import JobDefinition
from orchestra._worker._describe import describe, format_traceback, storable, type_name
from orchestra.errors import PayloadError

#: Errors and tracebacks are stored bounded: a job must not be able to bloat
#: the attempt log (or exceed a NOTIFY or log line) with a megabyte message.
ERROR_MAX_CHARS = 4_000
TRACEBACK_MAX_CHARS = 32_000


Outcome = Literal[
    "succeeded", "failed", "interrupted", "timed_out", "released", "snoozed", "cancelled"
]


@attrs.define
class Finish:
    """The end of one attempt, waiting to be committed."""

    job_id: int
    definition: str
    attempt: int
    max_attempts: int
    token: uuid.UUID
    started_at: dt.datetime
    outcome: Outcome
    result: str | None = None
    error: str | None = None
    traceback: str | None = None
    retry_delay_ms: int = 0
    #: How long the attempt ran, in seconds.
    duration_s: float = 0.0
    payload_invalid: bool = False
    #: The database refused to record it (bad data); nothing was written.
    dropped: bool = False
    #: The last progress the attempt reported that is not written yet (JSON
    #: text), written with the finish; None keeps what the row holds.
    progress: str | None = None
    # Filled in from the statement's result:
    committed_status: str | None = None
    committed_run_at: dt.datetime | None = None

    @property
    def duration_ms(self) -> int:
        """How long the attempt ran, in whole milliseconds."""
        return round(self.duration_s * 1000)

    @property
    def written(self) -> bool:
        """Whether a lane writes it: a cancelled attempt's end was recorded by the
        cancel itself (``manage_job_cancel``), which also took the job off the
        hot table; there is nothing left for the worker to write."""
        return self.outcome != "cancelled"


@attrs.frozen
class Claimed:
    """A job as ``job_claim`` returned it: one live attempt, fenced by its token."""

    id: int
    definition: str
    #: The payload's JSON text, decoded in the attempt (load_stored).
    payload: str
    attempt: int
    max_attempts: int
    token: uuid.UUID
    started_at: dt.datetime
    run_at: dt.datetime
    priority: int
    trace_context: str | None
    #: The tags it was deferred with.
    tags: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: Its metadata's JSON text, decoded if the job reads ``ctx.meta``.
    meta: str = "{}"


def finish(job: Claimed, outcome: Outcome, **fields: Any) -> Finish:
    """The Finish of ``job``'s attempt with ``outcome``."""
    return Finish(
        job_id=job.id,
        definition=job.definition,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        token=job.token,
        started_at=job.started_at,
        outcome=outcome,
        **fields,
    )


def succeeded(
    job: Claimed,
    definition: JobDefinition[Any],
    value: Any,
    started: float,
    max_payload_bytes: int,
) -> Finish:
    """The success of an attempt that returned ``value``; raises if it cannot be stored."""
    result = _converter.dumps(value, what="the return value", owner=definition.name)
    check_result_size(result, definition, max_payload_bytes)
    return finish(job, "succeeded", result=result, duration_s=elapsed_s(started))


def check_result_size(result: str, definition: JobDefinition[Any], max_payload_bytes: int) -> None:
    """Raise PayloadError if a return value's JSON is over the payload size cap."""
    if len(result) <= max_payload_bytes:  # chars <= bytes: a cheap pre-check
        return
    size = len(result.encode("utf-8"))
    if size > max_payload_bytes:
        raise PayloadError(
            definition.name,
            f"the return value is {size} bytes, over the limit of {max_payload_bytes} bytes",
        )


def failure(
    job: Claimed,
    definition: JobDefinition[Any],
    started: float,
    exc: BaseException,
    *,
    payload_invalid: bool = False,
) -> Finish:
    """The failure of an attempt that raised ``exc`` (or whose payload did not structure)."""
    if isinstance(exc, _converter.UnreadablePayloadError):
        error = f"PayloadError: stored payload cannot be read: {exc}"
        trace = None
    elif payload_invalid:
        error = (
            f"PayloadError: stored payload does not fit {definition.payload_type!r}: "
            f"{_converter.describe_structure_error(exc)}"
        )
        trace = None
    else:
        error = describe(exc)
        trace = format_traceback(exc)
    return failed(job, definition, started, error, trace, payload_invalid=payload_invalid)


def unrecordable(
    job: Claimed, definition: JobDefinition[Any], started: float, exc: BaseException
) -> Finish:
    """A failed attempt whose own error could not be described: the type name only."""
    return failed(
        job,
        definition,
        started,
        f"{type_name(exc)}: <the error of this attempt could not be rendered>",
        None,
    )


def failed(
    job: Claimed,
    definition: JobDefinition[Any],
    started: float,
    error: str,
    trace: str | None,
    *,
    payload_invalid: bool = False,
) -> Finish:
    """A failed attempt, its error and traceback bounded, retried after the backoff."""
    return finish(
        job,
        "failed",
        error=storable(error, ERROR_MAX_CHARS),
        traceback=None if trace is None else storable(trace, TRACEBACK_MAX_CHARS),
        payload_invalid=payload_invalid,
        retry_delay_ms=definition.backoff.delay_ms(job.attempt),
        duration_s=elapsed_s(started),
    )


def timed_out(job: Claimed, definition: JobDefinition[Any], started: float) -> Finish:
    """An attempt cut by ``attempt_timeout_ms``: failed, retried after the backoff."""
    return finish(
        job,
        "timed_out",
        error=f"AttemptTimeout: the attempt ran longer than attempt_timeout_ms "
        f"({definition.attempt_timeout_ms} ms) and was cut",
        retry_delay_ms=definition.backoff.delay_ms(job.attempt),
        duration_s=elapsed_s(started),
    )


def snoozed(job: Claimed, started: float, seconds: float) -> Finish:
    """An attempt whose function snoozed (``Snooze``): the job is due again in
    ``seconds``, its attempt refunded; the attempt log says for how long."""
    return finish(
        job,
        "snoozed",
        error=f"snoozed for {seconds:g} s",
        retry_delay_ms=round(seconds * 1000),
        duration_s=elapsed_s(started),
    )


def cancelled(job: Claimed, started: float) -> Finish:
    """An attempt stopped because its job was cancelled while it ran: nothing to
    write (the cancel recorded it), its slot to free, its event to emit."""
    return finish(
        job,
        "cancelled",
        error="cancelled: the job was cancelled while this attempt ran",
        duration_s=elapsed_s(started),
    )


def interrupted(job: Claimed, started: float) -> Finish:
    """An attempt the worker's stop gave up on: it counts, the job is retried."""
    return finish(
        job,
        "interrupted",
        error="interrupted: the worker stopped before the job finished",
        duration_s=elapsed_s(started),
    )


def elapsed_s(started: float) -> float:
    """Seconds since the ``time.monotonic()`` reading ``started``."""
    return time.monotonic() - started
