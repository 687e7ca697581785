"""Inserting jobs: what ``defer`` and ``defer_many`` send, written once for both twins.

The insert operations are generators of statements (:mod:`orchestra._ops`);
``JobDefinition.defer`` and ``defer_async`` (and the ``defer_many`` pair)
check their arguments, then run the same operation on a sync or an async
connection. The insert statements read the definition's row, so that they
insert nothing without it: an empty insert is then explained (the row is
missing, a dependency is missing, or a unique key is held) and acted upon.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from orchestra._checks import is_int
from orchestra._jobs import JobHandle, ManagedDatabase
from orchestra._ops import Op, Statement
from orchestra.errors import ConfigurationError, OrchestraError, UnknownJobError

if TYPE_CHECKING:
    import opentelemetry.trace

logger = logging.getLogger("orchestra")

#: Insert attempts when a unique key's holder is finalized between the insert
#: and the lookup of the holder.
UNIQUE_RETRIES = 5
#: Tries of the re-check of a waiting job's dependencies after its defer
#: committed (it can lose a deadlock to a worker finishing them).
RECHECK_TRIES = 3

# OpenTelemetry is optional (extra ``otel``) and never imported by orchestra
# itself at import time: a span can only be current if the application has
# imported opentelemetry already, so current_trace_context looks it up in
# sys.modules and pays one dict lookup when it is absent.
_OTEL_TRACE = "opentelemetry.trace"


class Deferring(Protocol):
    """What inserting needs of the definition whose jobs it inserts (a JobDefinition)."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> ManagedDatabase: ...

    def _ensure_op(self) -> Op[None]:
        """Write the definition's row if it is missing, and remember it is written."""
        ...

    def _forget_ensured(self) -> None:
        """The row was found missing: it must be written again before it is relied on."""
        ...


class DeferHook(Protocol):
    """Told of every defer that returned, in the context it was set for (:data:`defer_hooks`).

    ``orchestra.testing.inline`` is one: it runs the deferred jobs right away.
    ``conn`` is the caller's connection when the defer ran in it (its
    transaction may still be open), None when orchestra's own connection
    inserted and committed the jobs. What a hook raises, the defer raises (the
    jobs are inserted all the same).
    """

    def _after_defer(
        self,
        definition: Deferring,
        handles: Sequence[JobHandle],
        conn: psycopg.Connection[Any] | None,
    ) -> None:
        """After ``defer`` or ``defer_many`` returned ``handles``."""
        ...

    async def _after_defer_async(
        self,
        definition: Deferring,
        handles: Sequence[JobHandle],
        conn: psycopg.AsyncConnection[Any] | None,
    ) -> None:
        """After ``defer_async`` or ``defer_many_async`` returned ``handles``."""
        ...


#: The hooks of the current context, called by every defer after its insert
#: (an empty tuple, the default, costs one lookup per defer). A context
#: variable rather than a global: a hook set by one test, thread or task is
#: seen by the code it runs (and the tasks and ``asyncio.to_thread`` calls it
#: starts, which copy its context), never by tests running beside it. Set and
#: reset only by ``orchestra.testing``.
defer_hooks: ContextVar[tuple[DeferHook, ...]] = ContextVar("orchestra_defer_hooks", default=())


# -- the operations ----------------------------------------------------------


def insert_one(definition: Deferring, params: dict[str, Any], *, own: bool) -> Op[JobHandle]:
    """Insert one job, or find the holder of its unique key; see ``JobDefinition.defer``.

    ``own``: the connection is orchestra's own (autocommit), not the caller's
    transaction, so the insert is committed when the statement returns.

    A plain defer is one statement, and runs in this one generator: the
    sub-operations below start only when an insert came back empty or waiting.
    """
    config = definition.config
    query = "job_insert" if params["depends_on"] else "job_insert_simple"
    for _ in range(UNIQUE_RETRIES):
        row = yield Statement(query, params, "first")
        if row is None:
            row = yield from _insert_again(definition, query, params, own=own)
        if row is not None:
            if own and row[1] == "waiting":
                # Committed: close the race with a finishing dependency.
                yield from _recheck_waiting(definition, row)
            return JobHandle(int(row[0]), config)
        wanted = params["depends_on"]
        if wanted:
            found = yield Statement("job_ids_existing", {"ids": wanted})
            _check_found((r["id"] for r in found), wanted, params)
        holder = yield Statement("job_find_unique", params, "first")
        if holder is not None:
            return JobHandle(int(holder[0]), config, deduplicated=True)
        # The holder was finalized between the two statements: insert again.
    raise OrchestraError(
        f"defer of {definition.name!r}: unique key {params['unique_key']!r} is taken and freed "
        f"again faster than it can be read ({UNIQUE_RETRIES} tries); nothing was inserted"
    )


def insert_many(definition: Deferring, params: dict[str, Any], *, own: bool) -> Op[list[JobHandle]]:
    """Insert every job of ``params["payloads"]`` in one statement; see ``defer_many``."""
    query = "job_insert_many"
    row = yield Statement(query, params, "first")
    if _inserted_nothing(row):
        row = yield from _insert_again(definition, query, params, own=own)
    ids: list[int] = row[0] if row else []
    return [JobHandle(int(i), definition.config) for i in ids]


def _insert_again(
    definition: Deferring, query: str, params: dict[str, Any], *, own: bool
) -> Op[tuple[Any, ...] | None]:
    """After an insert that inserted nothing: insert again if the definition row was missing.

    Returns the row of the insert run again, or None when the row is present
    (the insert was empty for another reason: a dependency or a unique key).
    """
    exists = yield Statement("definition_exists", {"name": definition.name}, "first")
    if exists is not None and bool(exists[0]):
        return None
    # The definition row vanished while this process believed it present
    # (swept as stale, or deleted by hand): write it again.
    definition._forget_ensured()
    if not own:
        raise OrchestraError(
            f"definition {definition.name!r} is missing from the database (swept or deleted); "
            "nothing was inserted: defer again (outside your transaction, or after it), "
            "and the definition will be written again first"
        )
    yield from definition._ensure_op()
    row: tuple[Any, ...] | None = yield Statement(query, params, "first")
    return row


def _recheck_waiting(definition: Deferring, row: tuple[Any, ...]) -> Op[None]:
    """Release a job that came back waiting if its dependencies succeeded meanwhile.

    The job is committed whatever happens here: the defer must not fail. A
    re-check that loses a deadlock to a worker finishing the dependencies runs
    again; after the last try the orchestrator's finalizer releases the job
    (its catch-up) once its dependencies have succeeded.
    """
    params = {"id": row[0], "notify_channel": definition.config.notify_channel}
    for _ in range(RECHECK_TRIES):
        try:
            yield Statement("job_recheck_waiting", params, "none")
            return
        except psycopg.errors.DeadlockDetected:
            pass
    logger.warning(
        "job %d of %r: its dependencies could not be re-checked (deadlock with a "
        "finishing worker, %d tries); the orchestrator releases it once they succeed",
        row[0],
        definition.name,
        RECHECK_TRIES,
    )


def _inserted_nothing(row: tuple[Any, ...] | None) -> bool:
    """Whether an insert statement's row says nothing was inserted.

    job_insert and job_insert_simple return no row, job_insert_many an empty
    array of ids: a unique key held, a dependency missing, or the definition
    row missing (the inserts read it, so that they insert nothing without it).
    """
    return row is None or (isinstance(row[0], list) and not row[0])


def _check_found(present: Iterable[int], wanted: list[int], params: dict[str, Any]) -> None:
    """Raise UnknownJobError naming the missing dependencies, if any is missing.

    Without a unique key, an insert that came back empty can only mean a
    missing dependency: then all of them are named if none is found missing
    (it was deleted between the two statements).
    """
    found = set(present)
    missing = tuple(i for i in wanted if i not in found)
    if missing or params["unique_key"] is None:
        raise UnknownJobError(missing or tuple(wanted), "depends_on")


# -- what an insert stores besides the payload ---------------------------------


def dependency_ids(depends_on: Iterable[JobHandle | int]) -> list[int]:
    """The distinct job ids of ``depends_on``, in order."""
    if isinstance(depends_on, (str, bytes)):
        raise ConfigurationError("depends_on", "must be an iterable of JobHandle or int")
    ids: list[int] = []
    for item in depends_on:
        value = item.id if isinstance(item, JobHandle) else item
        if not is_int(value) or value <= 0:
            raise ConfigurationError(
                "depends_on", f"{item!r} is not a job handle or a positive job id"
            )
        if value not in ids:
            ids.append(value)
    return ids


def current_trace_context() -> str | None:
    """The current OpenTelemetry context as stored with a deferred job, or None.

    None unless opentelemetry is installed and the caller is inside a valid
    span. Otherwise the globally configured propagator (W3C trace context by
    default) injects its carrier, stored as compact JSON text such as
    ``{"traceparent":"00-...-...-01"}`` (plus ``tracestate`` and whatever else
    the propagator writes). :mod:`orchestra.otel` extracts it on the worker.
    """
    trace = sys.modules.get(_OTEL_TRACE)
    if trace is None:
        return None  # not imported by anyone: no span can be current
    span: opentelemetry.trace.Span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    import opentelemetry.propagate  # noqa: PLC0415 (optional; cached after the first defer)

    carrier: dict[str, str] = {}
    opentelemetry.propagate.inject(carrier)
    if not carrier:
        return None  # a no-op propagator (OTEL_PROPAGATORS=none)
    return json.dumps(carrier, separators=(",", ":"), sort_keys=True)


def dedup_key(payload_json: str) -> str:
    """The unique key ``dedup=True`` derives from a payload.

    Equal JSON values give one key: object key order does not matter, and a
    number is a number however it is written (``1``, ``1.0`` and ``1e0`` are
    equal, as in a jsonb comparison). Payloads without integral floats hash
    exactly as before this rule, so existing keys stay valid.
    """
    value = json.loads(payload_json, parse_float=_integral_as_int)
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _integral_as_int(text: str) -> float | int:
    number = float(text)
    return int(number) if number.is_integer() else number
