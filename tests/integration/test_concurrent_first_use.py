"""Concurrent first uses on one event loop open one async pool and write a definition once.

Many tasks of a freshly started application reach orchestra at the same
moment: the first ``connection_async()`` calls must share one pool (each
opening its own would leave all but one open and unreachable), and the first
``defer_async()`` calls one ``definition_ensure``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from orchestra import Config, JobDefinition, _pools
from orchestra.testing import wait_until

CALLERS = 8


def sessions(test_dsn: str, application_name: str) -> int:
    """Server sessions open under ``application_name``."""
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [application_name],
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_concurrent_first_async_connections_open_one_pool_and_close_it(
    test_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight first connection_async() calls at once open one pool; close_async leaves none."""
    opened: list[AsyncConnectionPool[Any]] = []

    class RecordedPool(AsyncConnectionPool[Any]):
        # The signature of psycopg_pool's open(), timeout included.
        async def open(self, wait: bool = False, timeout: float = 30.0) -> None:  # noqa: ASYNC109
            opened.append(self)  # and kept alive: an unclosed pool stays open
            await super().open(wait=wait, timeout=timeout)

    monkeypatch.setattr(_pools, "AsyncConnectionPool", RecordedPool)
    application_name = f"orchestra-pools-{uuid.uuid4().hex[:10]}"
    config = Config(make_conninfo(test_dsn, application_name=application_name), schema=schema)

    async def borrow() -> None:
        async with config.connection_async() as conn:
            await conn.execute("SELECT 1")

    async def main() -> None:
        try:
            await asyncio.gather(*(borrow() for _ in range(CALLERS)))
        finally:
            await config.close_async()

    asyncio.run(main())
    assert len(opened) == 1
    assert all(pool.closed for pool in opened)
    wait_until(
        lambda: sessions(test_dsn, application_name) == 0,
        message="a connection of orchestra's async pools is still open after close_async()",
    )


def test_concurrent_first_defers_write_the_definition_once(config: Config) -> None:
    """Eight first defer_async() calls at once send one definition_ensure, and all insert."""
    definition = JobDefinition(config, name="first", job_function=lambda: None)
    ensure_async = definition.ensure_async
    ensures = 0

    async def counted(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal ensures
        ensures += 1
        await ensure_async(conn)

    definition.ensure_async = counted  # type: ignore[method-assign]

    async def main() -> int:
        try:
            handles = await asyncio.gather(*(definition.defer_async({}) for _ in range(CALLERS)))
        finally:
            await config.close_async()
        return len({handle.id for handle in handles})

    assert asyncio.run(main()) == CALLERS
    assert ensures == 1
