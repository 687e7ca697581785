"""Shared fixtures: a real PostgreSQL, one fresh schema per test.

The server is ``ORCHESTRA_TEST_DSN`` when set, else the embedded PostgreSQL
(pgserver) with its data in a temporary directory shared by the xdist workers.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestra import Config
from orchestra.testing import EventRecorder

REPO = Path(__file__).resolve().parent.parent

# The fault battery's report table: registered here, not in tests/faults/conftest.py,
# so that the xdist controller (which imports only this conftest) prints it too.
# The PgBouncer fixtures serve tests of every directory.
pytest_plugins = ("tests.faults._report", "tests._pgbouncer")


@pytest.fixture(scope="session")
def test_dsn() -> str:
    """The DSN of the PostgreSQL the tests run against."""
    configured = os.environ.get("ORCHESTRA_TEST_DSN", "").strip()
    if configured:
        return configured
    home = Path(tempfile.gettempdir()) / f"orchestra-test-home-{os.getuid()}"
    os.environ["ORCHESTRA_HOME"] = str(home)
    from orchestra._embedded import embedded_dsn

    dsn = embedded_dsn(announce=False)
    os.environ["ORCHESTRA_TEST_DSN"] = dsn  # child processes use the same server
    return dsn


@pytest.fixture
def schema(test_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A schema name no other test uses; dropped afterwards."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    name = f"t_{worker}_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def config(test_dsn: str, schema: str) -> Iterator[Config]:
    """A Config on a freshly migrated schema of its own."""
    cfg = Config(test_dsn, schema=schema)
    cfg.prepare_schema()
    yield cfg
    cfg.close()


@pytest.fixture
def db(test_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A raw autocommit connection for assertions."""
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def recorder() -> EventRecorder:
    """An event handler that records events."""
    return EventRecorder()
