"""Hostile job functions and payload types for the fault battery.

Everything here is module level and builds no Config on import, so that the
children of ``orchestra daemon --processes N`` can import the functions by
reference. A hostile function reads what to do from its payload's ``kind``:
raise some kind of BaseException, raise an exception that cannot be printed,
return something that cannot be stored, or (in a child process only) kill the
process it runs in. Neighbour functions behave, and record every execution in
the fault battery's ``fault_ledger`` table (:mod:`tests.faults._ledger`; the
schema comes from ``E2E_SCHEMA``, the DSN from ``ORCHESTRA_TEST_DSN``, which
the daemon and its children inherit), so that the battery's invariants can
tell a job that ran twice from one that ran once. Hostile functions record
their execution as a failure on purpose before they misbehave.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import os
import resource
import signal
import sys
from typing import Any, NoReturn

import attrs
import psycopg
from psycopg import sql

from orchestra import Config, JobDefinition

#: Size of the message of the ``huge_message`` exception.
HUGE_MESSAGE_CHARS = 1_000_000
#: Size of the ``huge_result`` return value: over the default 1 MiB cap.
HUGE_RESULT_CHARS = 2 * 1024 * 1024
#: Depth of the ``deep_result`` return value: deeper than Python's recursion limit.
DEEP_RESULT_LEVELS = 10_000
#: Payloads echoed back whole by the payload functions up to this size (JSON chars).
ECHO_MAX_CHARS = 100_000

#: What each hostile kind raises or returns, and a text its attempts' errors must contain.
COMMON_KINDS: dict[str, str] = {
    "keyboard_interrupt": "KeyboardInterrupt",
    "system_exit_0": "SystemExit",
    "system_exit_1": "SystemExit",
    "system_exit_text": "SystemExit",
    "sys_exit": "SystemExit",
    "generator_exit": "GeneratorExit",
    "custom_base": "HostileBaseError",
    "base_group": "BaseExceptionGroup",
    "cancelled": "CancelledError",
    "unprintable": "UnprintableError",
    "unreprable": "UnreprableError",
    "huge_message": "ValueError",
    "control_chars": "ValueError",
    "unserializable": "return value",
    "huge_result": "return value",
    "nan_result": "return value",
    "nul_result": "return value",
    "circular_result": "return value",
    "deep_result": "RecursionError|return value",
}
#: Kinds that end the process they run in: only ever run in a child process.
CHILD_ONLY_KINDS: dict[str, str] = {
    "os_exit": "exit code 7",
    "sigkill_self": "SIGKILL",
    "segfault": "SIGSEGV",
}
#: A marker at both ends of the huge and the control-character messages.
MARKER = "hostile-marker"


class HostileBaseError(BaseException):
    """A BaseException subclass of the job's own (not an Exception)."""


class UnprintableError(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of UnprintableError is broken")


class UnreprableError(Exception):
    """An exception whose ``__str__`` and ``__repr__`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of UnreprableError is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ of UnreprableError is broken")


def _nested_list(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def _segfault() -> NoReturn:
    # No core file: the crash is the point, not its post-mortem.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)
    raise AssertionError("reading address 0 did not crash")  # pragma: no cover


def misbehave(kind: str) -> Any:
    """Raise, return or crash as ``kind`` says (see COMMON_KINDS and CHILD_ONLY_KINDS)."""
    if kind == "keyboard_interrupt":
        raise KeyboardInterrupt("raised by the job")
    if kind == "system_exit_0":
        raise SystemExit(0)
    if kind == "system_exit_1":
        raise SystemExit(1)
    if kind == "system_exit_text":
        raise SystemExit("the job asked to exit")
    if kind == "sys_exit":
        sys.exit(3)
    if kind == "generator_exit":
        raise GeneratorExit("raised by the job")
    if kind == "custom_base":
        raise HostileBaseError("a BaseException of the job's own")
    if kind == "base_group":
        raise BaseExceptionGroup(
            "a group with an interrupt in it", [KeyboardInterrupt(), ValueError("inner")]
        )
    if kind == "cancelled":
        raise asyncio.CancelledError("the job cancelled itself")
    if kind == "unprintable":
        raise UnprintableError()
    if kind == "unreprable":
        raise UnreprableError()
    if kind == "huge_message":
        raise ValueError(f"{MARKER} {'x' * HUGE_MESSAGE_CHARS} {MARKER}")
    if kind == "control_chars":
        raise ValueError(f"{MARKER} nul\x00 bell\x07 esc\x1b[31m cr\r lf\n del\x7f {MARKER}")
    if kind == "unserializable":
        return object()
    if kind == "huge_result":
        return "x" * HUGE_RESULT_CHARS
    if kind == "nan_result":
        return {"value": float("nan")}
    if kind == "nul_result":
        return {"value": "a\x00b"}
    if kind == "circular_result":
        loop: list[Any] = []
        loop.append(loop)
        return loop
    if kind == "deep_result":
        return _nested_list(DEEP_RESULT_LEVELS)
    if kind == "os_exit":
        os._exit(7)
    if kind == "sigkill_self":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segfault":
        _segfault()
    raise AssertionError(f"unknown hostile kind {kind!r}")


# -- the ledger: every execution, as the fault battery's invariants read it -------------


def _ledger_insert() -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {s}.fault_ledger (job_id, definition, attempt, pid, finished, outcome)"
        " VALUES (%s, %s, %s, %s, clock_timestamp(), %s)"
    ).format(s=sql.Identifier(os.environ["E2E_SCHEMA"]))


def _params(ctx: Any, outcome: str) -> tuple[Any, ...]:
    # In a child process ctx.definition is the definition's name, else the JobDefinition.
    name = ctx.definition if isinstance(ctx.definition, str) else ctx.definition.name
    return (ctx.job_id, name, ctx.attempt, os.getpid(), outcome)


def _record(ctx: Any, outcome: str = "succeeded") -> None:
    with psycopg.connect(os.environ["ORCHESTRA_TEST_DSN"], autocommit=True) as conn:
        conn.execute(_ledger_insert(), _params(ctx, outcome))


async def _record_async(ctx: Any, outcome: str = "succeeded") -> None:
    async with await psycopg.AsyncConnection.connect(
        os.environ["ORCHESTRA_TEST_DSN"], autocommit=True
    ) as conn:
        await conn.execute(_ledger_insert(), _params(ctx, outcome))


def hostile(payload: dict[str, Any], ctx: Any) -> Any:
    """A ``def`` job that misbehaves as ``payload["kind"]`` says (a failure on purpose)."""
    _record(ctx, "failed")
    return misbehave(payload["kind"])


async def hostile_async(payload: dict[str, Any], ctx: Any) -> Any:
    """An ``async def`` job that misbehaves as ``payload["kind"]`` says, after an await."""
    await _record_async(ctx, "failed")
    return misbehave(payload["kind"])


# -- neighbours: well-behaved jobs ------------------------------------------------------


def neighbour(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Record the execution; return the payload's ``n``."""
    _record(ctx)
    return {"n": payload["n"]}


async def neighbour_async(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """The ``async def`` twin of :func:`neighbour`."""
    await _record_async(ctx)
    return {"n": payload["n"]}


# -- payload functions: what a job makes of a payload a producer inserted ---------------


@attrs.frozen
class Order:
    """An attrs payload type."""

    id: int
    item: str


@dataclasses.dataclass(frozen=True)
class Parcel:
    """A dataclass payload type."""

    id: int
    weight_grams: int
    label: str


def _echo(payload: Any) -> dict[str, Any]:
    size = len(json.dumps(payload, ensure_ascii=False))
    return {"echo": payload if size <= ECHO_MAX_CHARS else None, "size": size}


def echo(payload: Any, ctx: Any) -> dict[str, Any]:
    """Plain JSON: record the execution, return the payload (or only its size if large)."""
    _record(ctx)
    return _echo(payload)


async def echo_async(payload: Any, ctx: Any) -> dict[str, Any]:
    """The ``async def`` twin of :func:`echo`."""
    await _record_async(ctx)
    return _echo(payload)


def take_order(payload: Order, ctx: Any) -> dict[str, Any]:
    """A typed payload: record the execution, say what was structured."""
    assert isinstance(payload, Order)
    _record(ctx)
    return {"id": payload.id, "item_chars": len(payload.item)}


async def take_order_async(payload: Order, ctx: Any) -> dict[str, Any]:
    """The ``async def`` twin of :func:`take_order`."""
    assert isinstance(payload, Order)
    await _record_async(ctx)
    return {"id": payload.id, "item_chars": len(payload.item)}


def ship_parcel(payload: Parcel, ctx: Any) -> dict[str, Any]:
    """A dataclass payload: record the execution, say what was structured."""
    assert isinstance(payload, Parcel)
    _record(ctx)
    return {"id": payload.id, "label_chars": len(payload.label)}


async def ship_parcel_async(payload: Parcel, ctx: Any) -> dict[str, Any]:
    """The ``async def`` twin of :func:`ship_parcel`."""
    assert isinstance(payload, Parcel)
    await _record_async(ctx)
    return {"id": payload.id, "label_chars": len(payload.label)}


# -- definitions ---------------------------------------------------------------------------

#: How a worker runs job functions: on job threads, on its event loop, or in child processes.
MODES = ("thread", "async", "child")
#: The lease of every hostile definition; heartbeats extend it every third of it.
LOCK_INTERVAL_MS = 1_000
#: Attempts of the hostile and payload definitions (retried at once).
HOSTILE_ATTEMPTS = 2


def hostile_channel(mode: str) -> str:
    """The channel of the hostile and neighbour definitions run in ``mode``."""
    return f"hostile-{mode}"


def payload_channel(mode: str) -> str:
    """The channel of the payload definitions run in ``mode``."""
    return f"payload-{mode}"


def define(config: Config) -> dict[str, JobDefinition[Any]]:
    """Register the fault battery's hostile definitions on ``config``.

    Per mode (``thread``, ``async``, ``child``), on channel ``hostile-<mode>``:
    ``hostile-<mode>`` (the child mode also has ``hostile-child-async``, an
    ``async def`` run in a child) with HOSTILE_ATTEMPTS attempts, and
    ``neighbour-<mode>`` with one; on channel ``payload-<mode>``: ``echo-<mode>``
    (plain JSON), ``order-<mode>`` (attrs) and ``parcel-<mode>`` (dataclass).
    """
    common: dict[str, Any] = {"lock_interval_ms": LOCK_INTERVAL_MS, "backoff": "none"}
    functions: dict[str, tuple[Any, ...]] = {
        # mode: hostile, neighbour, echo, order, parcel
        "thread": (hostile, neighbour, echo, take_order, ship_parcel),
        "async": (hostile_async, neighbour_async, echo_async, take_order_async, ship_parcel_async),
        "child": (hostile, neighbour, echo, take_order, ship_parcel),
    }
    found: dict[str, JobDefinition[Any]] = {}

    def add(name: str, function: Any, channel: str, **settings: Any) -> None:
        found[name] = JobDefinition(
            config, name=name, job_function=function, channel=channel, **common, **settings
        )

    for mode, (bad, good, plain, order, parcel) in functions.items():
        hostile_on, payload_on = hostile_channel(mode), payload_channel(mode)
        add(f"hostile-{mode}", bad, hostile_on, num_attempts=HOSTILE_ATTEMPTS)
        add(f"neighbour-{mode}", good, hostile_on)
        add(f"echo-{mode}", plain, payload_on, num_attempts=HOSTILE_ATTEMPTS)
        add(f"order-{mode}", order, payload_on, num_attempts=HOSTILE_ATTEMPTS, payload_type=Order)
        add(
            f"parcel-{mode}",
            parcel,
            payload_on,
            num_attempts=HOSTILE_ATTEMPTS,
            payload_type=Parcel,
        )
    add(
        "hostile-child-async",
        hostile_async,
        hostile_channel("child"),
        num_attempts=HOSTILE_ATTEMPTS,
    )
    return found
