"""Database work written once, run on a sync or on an async connection.

An operation is a generator. It checks its arguments, yields the statements
it needs (:class:`Statement`), receives their rows, or the database error a
statement raised (thrown back into it, where it may handle it and go on), and
returns its value. :func:`run` executes the statements on a sync connection,
:func:`run_async` on an async one, so that an operation's sync and async
callers share its body; the callers choose and borrow the connection.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any, Literal, NamedTuple, TypeVar

import psycopg
from psycopg.rows import dict_row

from orchestra._sql import Queries

T = TypeVar("T")
Row = dict[str, Any]

#: What a statement's sender gets back: every row as a dict (``dicts``), the
#: first row as a tuple or None (``first``), or nothing (``none``).
Reply = Literal["dicts", "first", "none"]


class Statement(NamedTuple):
    """A named query of the schema's :class:`~orchestra._sql.Queries`, its parameters and reply.

    A tuple rather than an attrs class: ``defer`` builds one per job, and a
    tuple is the cheapest immutable value to build.
    """

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


def _execute(
    conn: psycopg.Connection[Any], query: bytes, params: Mapping[str, Any], reply: Reply
) -> Any:
    if reply == "first":
        return conn.execute(query, params).fetchone()
    if reply == "dicts":
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()
    conn.execute(query, params)
    return None


async def _execute_async(
    conn: psycopg.AsyncConnection[Any], query: bytes, params: Mapping[str, Any], reply: Reply
) -> Any:
    if reply == "first":
        return await (await conn.execute(query, params)).fetchone()
    if reply == "dicts":
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(query, params)
            return await cursor.fetchall()
    await conn.execute(query, params)
    return None


# run and run_async hand each reply (or error) to the operation inline, in one
# frame and one try: defer runs through here once per job.


def run(
    conn: psycopg.Connection[Any], queries: Queries, op: Op[T], first: Statement | None = None
) -> T:
    """Run ``op`` to its end on ``conn``; its value.

    ``first``: the statement ``op`` yielded already, when :func:`start` ran it.
    """
    try:
        statement = next(op) if first is None else first
        while True:
            query, params, reply = statement
            try:
                answer = _execute(conn, queries[query], params, reply)
            except Exception as exc:  # the operation may handle it (and then go on) or not
                statement = op.throw(exc)
            else:
                statement = op.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def run_async(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    op: Op[T],
    first: Statement | None = None,
) -> T:
    """Async twin of :func:`run`."""
    try:
        statement = next(op) if first is None else first
        while True:
            query, params, reply = statement
            try:
                answer = await _execute_async(conn, queries[query], params, reply)
            except Exception as exc:
                statement = op.throw(exc)
            else:
                statement = op.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
