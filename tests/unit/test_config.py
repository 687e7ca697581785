"""Unit tests of Config: argument validation, redaction and NOTIFY channel names, no database."""

from __future__ import annotations

from typing import Any

import pytest

from orchestra import Config, ConfigurationError
from orchestra._schema_names import notify_channel_for
from tests.unit._support import SECRET, SECRET_URI, UNREACHABLE_DSN, ConnectionAttemptedError


def _argument_of(dsn: object = UNREACHABLE_DSN, **options: Any) -> str:
    """The ``argument`` of the ConfigurationError that building a Config raises."""
    with pytest.raises(ConfigurationError) as info:
        Config(dsn, **options)  # type: ignore[arg-type]
    return info.value.argument


class TestConfigValidation:
    """Config checks its arguments at construction, before any SQL."""

    def test_construction_does_not_connect(self) -> None:
        """Building a Config on an unreachable DSN succeeds: nothing connects until first use."""
        config = Config(UNREACHABLE_DSN, schema="unit")
        assert config.schema == "unit"
        assert config.dsn == UNREACHABLE_DSN

    def test_default_schema(self) -> None:
        """Without a schema the queue lives in ``_queue``."""
        assert Config(UNREACHABLE_DSN).schema == "_queue"

    @pytest.mark.parametrize(
        "schema", ["Bad", "1x", "pg_catalog", 'x"; DROP TABLE job;--', "a" * 64]
    )
    def test_invalid_schema(self, schema: str) -> None:
        """An invalid schema raises ConfigurationError naming ``schema``."""
        assert _argument_of(schema=schema) == "schema"

    @pytest.mark.parametrize("dsn", ["", "   ", 5])
    def test_invalid_dsn(self, dsn: object) -> None:
        """An empty or non-string DSN is refused naming ``dsn``."""
        assert _argument_of(dsn) == "dsn"

    @pytest.mark.parametrize(
        ("argument", "value"),
        [
            ("max_payload_bytes", 0),
            ("max_payload_bytes", 1),
            ("max_payload_bytes", True),
            ("max_payload_bytes", 1.5),
            ("pool_max_size", 0),
            ("connect_attempts", 0),
            ("connect_attempts", "3"),
        ],
    )
    def test_invalid_numbers(self, argument: str, value: object) -> None:
        """Sizes and attempt counts below their minimum, or not ints, are refused by name."""
        assert _argument_of(**{argument: value}) == argument

    def test_invalid_pool(self) -> None:
        """A pool that is not a psycopg_pool.ConnectionPool is refused naming ``pool``."""
        assert _argument_of(None, pool="not a pool") == "pool"

    def test_queries_use_the_schema(self) -> None:
        """The Config's queries are rendered for its schema."""
        assert b'"unit".job' in Config(UNREACHABLE_DSN, schema="unit").queries["job_insert"]

    def test_first_use_connects(self) -> None:
        """Control: borrowing a connection is what finally connects."""
        config = Config(UNREACHABLE_DSN, schema="unit", connect_attempts=1)
        with pytest.raises(ConnectionAttemptedError), config.connection():
            pytest.fail("no connection can be borrowed in unit tests")


class TestConfigRedaction:
    """A Config never shows its password."""

    def test_repr_hides_uri_password(self) -> None:
        """repr of a Config on a URI with a password contains ``***``, not the password."""
        text = repr(Config(SECRET_URI))
        assert SECRET not in text
        assert "***" in text
        assert "127.0.0.1:1" in text

    def test_repr_hides_key_value_password(self) -> None:
        """repr of a Config on a key=value DSN with a password hides it."""
        text = repr(Config(f"host=127.0.0.1 port=1 password={SECRET} dbname=db"))
        assert SECRET not in text

    def test_repr_hides_password_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A DSN resolved from ORCHESTRA_DSN is redacted in repr too."""
        monkeypatch.setenv("ORCHESTRA_DSN", SECRET_URI)
        config = Config()
        assert config.dsn == SECRET_URI
        assert SECRET not in repr(config)
        assert SECRET not in config.redacted_dsn

    def test_repr_without_dsn_does_not_resolve(self) -> None:
        """repr of a Config without DSN neither starts the embedded server nor fails."""
        assert "<unresolved>" in repr(Config())

    def test_redacted_dsn(self) -> None:
        """redacted_dsn replaces the password by ``***``."""
        assert Config(SECRET_URI).redacted_dsn == "postgresql://u:***@127.0.0.1:1/db"

    def test_repr_counts_definitions(self) -> None:
        """repr shows the schema and how many definitions are registered."""
        assert repr(Config(UNREACHABLE_DSN, schema="unit")).endswith(
            "schema='unit', definitions=0)"
        )


class TestNotifyChannel:
    """notify_channel_for names the NOTIFY channel of a schema."""

    def test_short_schema(self) -> None:
        """A short schema gives ``orchestra_<schema>``."""
        assert notify_channel_for("_queue") == "orchestra__queue"
        assert Config(UNREACHABLE_DSN).notify_channel == "orchestra__queue"

    @pytest.mark.parametrize("length", [1, 53, 54, 63])
    def test_fits_an_identifier(self, length: int) -> None:
        """The channel name is never longer than 63 characters, up to a 63-char schema."""
        assert len(notify_channel_for("a" * length)) <= 63

    def test_longest_unhashed(self) -> None:
        """A schema of 53 characters still gives the readable name."""
        assert notify_channel_for("a" * 53) == "orchestra_" + "a" * 53

    def test_distinct_long_schemas_get_distinct_channels(self) -> None:
        """Long schemas that differ only at the end get different channels."""
        names = {notify_channel_for("s" * 62 + suffix) for suffix in "abcdefghij"}
        assert len(names) == 10

    def test_hashed_name_is_stable(self) -> None:
        """The same long schema always gets the same channel."""
        assert notify_channel_for("x" * 63) == notify_channel_for("x" * 63)
