"""Config's settings for a transaction pooler in front of PostgreSQL, without a database.

``transaction_pooling`` turns off server-side prepared statements on every
connection orchestra opens and keeps LISTEN off ``dsn``; ``listen_dsn`` names a
direct connection for LISTEN. Each falls back to its environment variable.
"""

from __future__ import annotations

import pytest

from orchestra import Config, ConfigurationError, _db
from orchestra._database import LISTEN_DSN_ENV, TRANSACTION_POOLING_ENV
from orchestra._db import RESILIENCE_DEFAULTS
from tests.unit._support import SECRET, SECRET_URI, UNREACHABLE_DSN

DIRECT_DSN = "postgresql://listener@127.0.0.1:1/direct"


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRANSACTION_POOLING_ENV, raising=False)
    monkeypatch.delenv(LISTEN_DSN_ENV, raising=False)


def test_a_config_by_default_prepares_statements_and_listens_on_its_dsn() -> None:
    config = Config(UNREACHABLE_DSN)
    assert config.transaction_pooling is False
    assert config.connect_kwargs == {"autocommit": True, **RESILIENCE_DEFAULTS}
    assert config.listen_dsn == UNREACHABLE_DSN


def test_transaction_pooling_turns_prepared_statements_off_and_listen_off_the_dsn() -> None:
    config = Config(UNREACHABLE_DSN, transaction_pooling=True)
    assert config.connect_kwargs == {
        "autocommit": True,
        "prepare_threshold": None,
        **RESILIENCE_DEFAULTS,
    }
    assert config.listen_dsn is None


def test_a_listen_dsn_takes_the_listen_connections_with_or_without_pooling() -> None:
    assert Config(UNREACHABLE_DSN, transaction_pooling=True, listen_dsn=DIRECT_DSN).listen_dsn == (
        DIRECT_DSN
    )
    assert Config(UNREACHABLE_DSN, listen_dsn=DIRECT_DSN).listen_dsn == DIRECT_DSN


@pytest.mark.parametrize("text", ["1", "true", "TRUE", " yes ", "on"])
def test_the_environment_turns_transaction_pooling_on(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(TRANSACTION_POOLING_ENV, text)
    assert Config(UNREACHABLE_DSN).transaction_pooling is True


@pytest.mark.parametrize("text", ["", "0", "false", "No", "off"])
def test_the_environment_leaves_transaction_pooling_off(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(TRANSACTION_POOLING_ENV, text)
    assert Config(UNREACHABLE_DSN).transaction_pooling is False


def test_an_explicit_setting_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRANSACTION_POOLING_ENV, "1")
    monkeypatch.setenv(LISTEN_DSN_ENV, "postgresql://other@127.0.0.1:2/db")
    config = Config(UNREACHABLE_DSN, transaction_pooling=False, listen_dsn=DIRECT_DSN)
    assert config.transaction_pooling is False
    assert config.listen_dsn == DIRECT_DSN


def test_the_environment_gives_the_listen_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRANSACTION_POOLING_ENV, "on")
    monkeypatch.setenv(LISTEN_DSN_ENV, DIRECT_DSN)
    assert Config(UNREACHABLE_DSN).listen_dsn == DIRECT_DSN


def test_an_unreadable_pooling_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TRANSACTION_POOLING_ENV, "maybe")
    with pytest.raises(ConfigurationError) as info:
        Config(UNREACHABLE_DSN)
    assert info.value.argument == f"${TRANSACTION_POOLING_ENV}"
    assert "'maybe'" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [1, "yes", 0.0])
def test_transaction_pooling_must_be_a_bool(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Config(UNREACHABLE_DSN, transaction_pooling=value)  # type: ignore[arg-type]
    assert info.value.argument == "transaction_pooling"


@pytest.mark.parametrize("value", ["", "   ", 5, "host=x port=nonsense=1 'unterminated"])
def test_a_bad_listen_dsn_is_refused_naming_it(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Config(UNREACHABLE_DSN, listen_dsn=value)  # type: ignore[arg-type]
    assert info.value.argument == "listen_dsn"
    assert "\n" not in str(info.value)


def test_an_unreadable_listen_dsn_variable_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LISTEN_DSN_ENV, "host=x 'unterminated")
    with pytest.raises(ConfigurationError) as info:
        Config(UNREACHABLE_DSN)
    assert info.value.argument == f"${LISTEN_DSN_ENV}"


def test_the_listen_dsn_password_is_never_shown() -> None:
    config = Config(UNREACHABLE_DSN, transaction_pooling=True, listen_dsn=SECRET_URI)
    shown = repr(config)
    assert "transaction_pooling=True" in shown
    assert "listen_dsn=" in shown
    assert SECRET not in shown
    bad = SECRET_URI + " 'unterminated"
    with pytest.raises(ConfigurationError) as info:
        Config(UNREACHABLE_DSN, listen_dsn=bad)
    assert SECRET not in str(info.value)


def test_connections_get_a_connect_timeout_and_keepalives_the_dsn_does_not_set() -> None:
    """A vanished server is noticed in seconds; what the DSN says wins."""
    config = Config(f"{UNREACHABLE_DSN}?connect_timeout=3&keepalives_idle=60")
    kwargs = config.connect_kwargs
    assert "connect_timeout" not in kwargs
    assert "keepalives_idle" not in kwargs
    assert kwargs["keepalives"] == 1
    assert kwargs["keepalives_count"] == RESILIENCE_DEFAULTS["keepalives_count"]


def test_libpq_environment_and_service_files_keep_their_own_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "30")
    assert "connect_timeout" not in _db.defaults_missing_from(UNREACHABLE_DSN)
    assert _db._connect_timeout(UNREACHABLE_DSN, 5.0) == {}
    assert _db.defaults_missing_from("service=production") == {}
    monkeypatch.delenv("PGCONNECT_TIMEOUT")
    assert _db._connect_timeout(UNREACHABLE_DSN, 5.0) == {"connect_timeout": 5}
    assert _db._connect_timeout(f"{UNREACHABLE_DSN}?connect_timeout=30", 5.0) == {}
