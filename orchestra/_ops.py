"""Database work written once, run on a sync or on an async connection.

An operation is a generator. It checks its arguments, yields the statements
it needs (:class:`Statement`), receives their rows, or the database error a
statement raised (thrown back into it, where it may handle it and go on), and
returns its value. :func:`drive` and :func:`drive_async` are the only places
that know whether the connection is sync or async, so every sync method and
its ``_async`` twin share one body.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any, Literal, TypeVar

import attrs
import psycopg
from psycopg.rows import dict_row

from orchestra._sql import Queries

T = TypeVar("T")
Row = dict[str, Any]

#: What a statement's sender gets back: every row as a dict (``dicts``), the
#: first row as a tuple or None (``first``), or nothing (``none``).
Reply = Literal["dicts", "first", "none"]


@attrs.frozen
class Statement:
    """A named query of the schema's :class:`~orchestra._sql.Queries`, its parameters and reply."""

    query: str
    params: Mapping[str, Any]
    reply: Reply = "dicts"


Op = Generator[Statement, Any, T]


def start(op: Op[T]) -> tuple[bool, Any]:
    """Run ``op`` to its first statement: (True, statement), or (False, value) if it needed none.

    Its argument checks run here, so a caller can start it before it connects.
    """
    try:
        return True, next(op)
    except StopIteration as stop:
        return False, stop.value


def _execute(conn: psycopg.Connection[Any], queries: Queries, statement: Statement) -> Any:
    query = queries[statement.query]
    if statement.reply == "dicts":
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(query, statement.params)
            return cursor.fetchall()
    cursor = conn.execute(query, statement.params)
    return cursor.fetchone() if statement.reply == "first" else None


async def _execute_async(
    conn: psycopg.AsyncConnection[Any], queries: Queries, statement: Statement
) -> Any:
    query = queries[statement.query]
    if statement.reply == "dicts":
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(query, statement.params)
            return await cursor.fetchall()
    cursor = await conn.execute(query, statement.params)
    return await cursor.fetchone() if statement.reply == "first" else None


def _advance(op: Op[T], reply: Any, error: Exception | None) -> tuple[bool, Any]:
    """Hand ``op`` its reply (or error): (True, next statement) or (False, its value)."""
    try:
        return True, (op.send(reply) if error is None else op.throw(error))
    except StopIteration as stop:
        return False, stop.value


def drive(conn: psycopg.Connection[Any], queries: Queries, op: Op[T], step: Any) -> T:
    """Run ``op`` from ``step`` (see :func:`start`) to its end on ``conn``."""
    going = True
    while going:
        try:
            reply, error = _execute(conn, queries, step), None
        except Exception as exc:  # the operation may handle it (and then go on) or not
            reply, error = None, exc
        going, step = _advance(op, reply, error)
    return step  # type: ignore[no-any-return]


async def drive_async(
    conn: psycopg.AsyncConnection[Any], queries: Queries, op: Op[T], step: Any
) -> T:
    """Async twin of :func:`drive`."""
    going = True
    while going:
        try:
            reply, error = await _execute_async(conn, queries, step), None
        except Exception as exc:
            reply, error = None, exc
        going, step = _advance(op, reply, error)
    return step  # type: ignore[no-any-return]


def run(conn: psycopg.Connection[Any], queries: Queries, op: Op[T]) -> T:
    """Run ``op`` from its start to its end on ``conn``."""
    started, step = start(op)
    return drive(conn, queries, op, step) if started else step


async def run_async(conn: psycopg.AsyncConnection[Any], queries: Queries, op: Op[T]) -> T:
    """Async twin of :func:`run`."""
    started, step = start(op)
    if not started:
        return step  # type: ignore[no-any-return]
    return await drive_async(conn, queries, op, step)
