"""Unit tests of orchestra._db: password redaction and bounded connection retries."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from orchestra import DatabaseUnavailableError, _db
from tests.unit._support import SECRET, SECRET_URI


class TestRedact:
    """redact and redact_dsn never let a password through."""

    @pytest.mark.parametrize(
        "dsn",
        [
            f"postgresql://u:{SECRET}@h:5432/db",
            f"postgres://u:{SECRET}@h/db",
            f"postgresql://:{SECRET}@h/db",
            f"postgresql://u:{SECRET}@h1:5432,h2:5433/db?sslmode=require",
            f"postgresql://u@h/db?password={SECRET}",
            f"host=x password={SECRET} dbname=y",
            f"host=x password = {SECRET} dbname=y",
            f"password={SECRET}",
            f"host=x password='{SECRET} with spaces' dbname=y",
            f"host=x password={SECRET} dbname",  # unparseable: falls back to the regexes
        ],
    )
    def test_redact_dsn_hides_password(self, dsn: str) -> None:
        """The password is gone from the result and ``***`` stands in its place."""
        redacted = _db.redact_dsn(dsn)
        assert SECRET not in redacted
        assert "***" in redacted

    def test_redact_dsn_keeps_the_rest_of_a_uri(self) -> None:
        """Only the password of a URI changes; user, host, port and database stay."""
        assert (
            _db.redact_dsn(f"postgresql://u:{SECRET}@h:5432/db") == "postgresql://u:***@h:5432/db"
        )

    def test_redact_dsn_keeps_the_rest_of_key_values(self) -> None:
        """A key=value DSN keeps its other parameters."""
        redacted = _db.redact_dsn(f"host=x password={SECRET} dbname=y")
        assert "host=x" in redacted
        assert "dbname=y" in redacted

    @pytest.mark.parametrize(
        "dsn",
        [
            "postgresql://u@h:5432/db",
            "host=x dbname=y user=u",
            "postgresql://h:5432/db?sslmode=require",
        ],
    )
    def test_redact_dsn_without_password_is_unchanged(self, dsn: str) -> None:
        """A DSN with no password comes back exactly as given."""
        assert _db.redact_dsn(dsn) == dsn

    def test_redact_free_text(self) -> None:
        """redact hides passwords embedded anywhere in a message, in both forms."""
        message = (
            f"failed for postgresql://u:{SECRET}@h/db and for host=h password={SECRET}: "
            "connection refused"
        )
        redacted = _db.redact(message)
        assert SECRET not in redacted
        assert redacted.count("***") == 2
        assert redacted.endswith("connection refused")

    def test_redact_quoted_password_with_escapes(self) -> None:
        """A quoted key=value password with escaped quotes and spaces is hidden whole."""
        redacted = _db.redact("password='it\\'s a secret' dbname=y")
        assert "secret" not in redacted
        assert redacted == "password=*** dbname=y"


class TestRetryDelays:
    """retry_delays gives the waits between connection attempts."""

    def test_one_delay_fewer_than_attempts(self) -> None:
        """n attempts have n-1 waits between them."""
        assert len(_db.retry_delays(5)) == 4

    def test_delays_double_from_first(self) -> None:
        """Waits start at 0.25 s and double."""
        assert _db.retry_delays(5) == [0.25, 0.5, 1.0, 2.0]

    def test_delays_are_capped(self) -> None:
        """No wait exceeds the cap."""
        assert _db.retry_delays(8) == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
        assert _db.retry_delays(4, first_s=1.0, cap_s=1.5) == [1.0, 1.5, 1.5]

    @pytest.mark.parametrize("attempts", [1, 0, -3])
    def test_single_or_no_attempt_has_no_delay(self, attempts: int) -> None:
        """With at most one attempt there is nothing to wait for."""
        assert _db.retry_delays(attempts) == []


class TestConnectRetries:
    """connect retries OperationalError with backoff, then raises DatabaseUnavailableError."""

    def test_gives_up_after_attempts_with_redacted_dsn(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After the last attempt the error names the redacted DSN and never the password."""
        calls: list[str] = []
        sleeps: list[float] = []

        def failing_connect(dsn: str, **kwargs: object) -> psycopg.Connection[object]:
            calls.append(dsn)
            raise psycopg.OperationalError(
                f'connection to "{dsn}" failed: password={SECRET} refused'
            )

        monkeypatch.setattr(psycopg, "connect", failing_connect)
        monkeypatch.setattr(time, "sleep", sleeps.append)
        with pytest.raises(DatabaseUnavailableError) as info:
            _db.connect(SECRET_URI, attempts=3)
        error = info.value
        assert len(calls) == 3
        assert sleeps == [0.25, 0.5]
        assert error.attempts == 3
        assert SECRET not in str(error)
        assert SECRET not in error.dsn
        assert SECRET not in error.reason
        assert error.dsn == "postgresql://u:***@127.0.0.1:1/db"
        assert error.dsn in str(error)
        assert error.__cause__ is None
        assert error.__suppress_context__

    def test_async_gives_up_with_redacted_dsn(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """connect_async also ends in DatabaseUnavailableError without the password."""

        async def failing_connect(dsn: str, **kwargs: object) -> psycopg.AsyncConnection[object]:
            raise psycopg.OperationalError(f"failed: {dsn}")

        monkeypatch.setattr(psycopg.AsyncConnection, "connect", failing_connect)
        with pytest.raises(DatabaseUnavailableError) as info:
            asyncio.run(_db.connect_async(SECRET_URI, attempts=1))
        assert SECRET not in str(info.value)
        assert info.value.attempts == 1

    def test_other_errors_are_not_retried(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Only OperationalError is retried; anything else propagates at once."""
        calls: list[str] = []

        def broken_connect(dsn: str, **kwargs: object) -> psycopg.Connection[object]:
            calls.append(dsn)
            raise psycopg.ProgrammingError("bad option")

        monkeypatch.setattr(psycopg, "connect", broken_connect)
        with pytest.raises(psycopg.ProgrammingError):
            _db.connect("host=x", attempts=4)
        assert len(calls) == 1

    def test_connect_uses_autocommit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Connections are opened with autocommit and a connect timeout."""
        seen: dict[str, object] = {}

        def fake_connect(dsn: str, **kwargs: object) -> object:
            seen.update(kwargs)
            return "connection"

        monkeypatch.setattr(psycopg, "connect", fake_connect)
        connection: object = _db.connect("host=x", attempts=1, timeout_s=0.2)
        assert connection == "connection"
        assert seen["autocommit"] is True
        assert seen["connect_timeout"] == 1
