"""Unit-test fixtures: no database, and any attempt to connect fails at once."""

from __future__ import annotations

import psycopg
import pytest

from orchestra import Config, _embedded
from tests.unit._support import UNREACHABLE_DSN, refuse_connection


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every connection attempt (and the embedded server) raise ConnectionAttemptedError."""
    monkeypatch.setattr(psycopg, "connect", refuse_connection)
    monkeypatch.setattr(psycopg.Connection, "connect", refuse_connection)
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", refuse_connection)
    monkeypatch.setattr(_embedded, "embedded_dsn", refuse_connection)
    monkeypatch.delenv("ORCHESTRA_DSN", raising=False)


@pytest.fixture
def cfg() -> Config:
    """A Config on a DSN nobody listens on; constructing it does not connect."""
    return Config(UNREACHABLE_DSN, schema="unit", connect_attempts=1)
