"""Fixtures of the fault battery: its scale, its report, and the ledger app's tables.

A case runs real ``orchestra daemon`` processes (the ``daemons`` fixture of
``tests/e2e/conftest.py``, re-exported here) against a schema of its own, injects
faults, waits on rows with deadlines, then checks :mod:`tests.faults._invariants`
and records one :class:`~tests.faults._report.CaseResult` with ``report.record``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition
from tests.e2e.conftest import daemons, e2e_env, pytest_runtest_makereport
from tests.faults._ledger import create_tables, define
from tests.faults._report import Report, Scale

__all__ = [
    "daemons",
    "e2e_env",
    "fault_jobs",
    "ledger",
    "pytest_runtest_makereport",
    "report",
    "scale",
]


@pytest.fixture
def scale() -> Scale:
    """Short by default; full when ``ORCHESTRA_FAULTS=full``."""
    return Scale.from_env()


@pytest.fixture
def report(request: pytest.FixtureRequest, scale: Scale) -> Report:
    """Where a case records its result line (printed in the end-of-run table)."""
    assert isinstance(request.node, pytest.Item)
    return Report(request.node, scale)


@pytest.fixture
def ledger(config: Config, db: psycopg.Connection[Any]) -> str:
    """The test's migrated schema with the fault ledger's tables; returns the schema."""
    create_tables(db, config.schema)
    return config.schema


@pytest.fixture
def fault_jobs(config: Config) -> dict[str, JobDefinition[Any]]:
    """The fault ledger's definitions on the test's Config (same settings as the app)."""
    return define(config)
