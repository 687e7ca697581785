"""E2E fixtures: ``orchestra`` daemons in child processes, and a queue schema with a ledger.

Every test gets a schema of its own (the shared ``schema`` fixture), so tests
run in parallel. Daemons are started with :class:`DaemonFactory`; their output
goes to a file whose tail is attached to the report of a failed test, and any
daemon still alive at teardown is killed.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition
from tests.e2e._support import REPO, DaemonFactory, Queue
from tests.e2e.apps._jobs import create_tables, define

_FACTORY = pytest.StashKey[DaemonFactory]()
#: Variables of the developer's environment that would change what a command
#: under test does: where the queue is, colours, the terminal's size.
NOT_INHERITED = frozenset(
    {
        "ORCHESTRA_DSN",
        "ORCHESTRA_SCHEMA",
        "ORCHESTRA_APP",
        "NO_COLOR",
        "FORCE_COLOR",
        "TTY_COMPATIBLE",
        "COLUMNS",
        "LINES",
        "PYTHONSAFEPATH",
    }
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the daemons' logs to the report of a failed test."""
    report = yield
    factory = item.stash.get(_FACTORY, None)
    if factory is not None and report.failed and factory.daemons:
        report.sections.append(("orchestra daemon logs", factory.logs()))
    return report


@pytest.fixture
def e2e_env(test_dsn: str, schema: str) -> dict[str, str]:
    """The environment of child processes: the test DSN and schema, the repo importable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in NOT_INHERITED and not k.startswith("PYTEST_")
    }
    env.update(
        ORCHESTRA_TEST_DSN=test_dsn,
        E2E_SCHEMA=schema,
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


@pytest.fixture
def queue(config: Config, db: psycopg.Connection[Any]) -> Queue:
    """The test's migrated schema, with the ledger and gate tables."""
    create_tables(db, config.schema)
    return Queue(db, config.schema)


@pytest.fixture
def jobs(config: Config) -> dict[str, JobDefinition[Any]]:
    """The e2e definitions on the test's Config, for deferring (same settings as the app)."""
    return define(config)


@pytest.fixture
def daemons(
    e2e_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[DaemonFactory]:
    """Start daemons on the test's schema; any still running at teardown are killed."""
    factory = DaemonFactory(e2e_env, tmp_path)
    request.node.stash[_FACTORY] = factory
    try:
        yield factory
    finally:
        factory.close()
