"""Passwords of any character stay hidden: redact_dsn, redact, repr(Config), connection errors.

Every printable ASCII character (and a few beyond) is tried inside a password,
in each DSN form libpq reads: a percent-encoded URI, a raw URI (libpq takes
``?``, ``#``, ``:``... unencoded), a URI query parameter and a quoted key=value.
"""

from __future__ import annotations

import re
import urllib.parse

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from orchestra import Config, ConfigurationError, DatabaseUnavailableError, _db
from tests._dsn_passwords import Case, assert_hidden, cases, kv_quote, params

ALL = params(cases())


@pytest.mark.parametrize("case", ALL)
def test_redact_dsn_hides_the_password_and_keeps_every_other_parameter(case: Case) -> None:
    """The redacted DSN reads back as the same parameters, with ``***`` as the password."""
    redacted = _db.redact_dsn(case.dsn)
    assert_hidden(redacted, case.password)
    expected = {**conninfo_to_dict(case.dsn), "password": "***"}
    assert conninfo_to_dict(redacted) == expected


@pytest.mark.parametrize("case", ALL)
def test_redact_dsn_shows_host_port_database_and_user(case: Case) -> None:
    """What people need to recognise the server stays readable."""
    redacted = _db.redact_dsn(case.dsn)
    for part in ("127.0.0.1", "1", "orchestra_db", "alice", "***"):
        assert part in redacted


@pytest.mark.parametrize("case", ALL)
def test_repr_of_config_hides_the_password(case: Case) -> None:
    """repr(Config) shows the DSN redacted, resolved or not."""
    config = Config(case.dsn, schema="unit")
    assert_hidden(repr(config), case.password)
    assert config.dsn == case.dsn
    assert_hidden(repr(config), case.password)
    assert_hidden(config.redacted_dsn, case.password)


@pytest.mark.parametrize("case", ALL)
def test_redact_hides_every_spelling_of_the_password_of_a_given_dsn(case: Case) -> None:
    """Raw, percent-encoded (either case), quoted in key=value form, as repr shows it."""
    password = case.password
    encoded = urllib.parse.quote(password, safe="")
    lower = re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded)
    text = (
        f"connecting with {case.dsn} failed: password {password} (encoded {encoded}, "
        f"lower {lower}, quoted {kv_quote(password)}, repr {password!r})"
    )
    redacted = _db.redact(text, case.dsn)
    assert_hidden(redacted, password)
    assert lower not in redacted
    assert redacted.startswith("connecting with ")


@pytest.mark.parametrize("case", ALL)
def test_redact_without_the_dsn_hides_a_password_seen_before(case: Case) -> None:
    """Once a DSN was redacted (or connected with), redact(text) alone hides its password."""
    _db.redact_dsn(case.dsn)
    assert_hidden(_db.redact(f"job failed: {case.password} / {case.dsn}"), case.password)


@pytest.mark.parametrize("case", ALL)
def test_failed_connect_error_hides_the_password(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a driver message that echoes the DSN and the password leaves nothing behind."""

    def failing(dsn: str, **kwargs: object) -> psycopg.Connection[object]:
        raise psycopg.OperationalError(f'connection to "{dsn}" failed for password {case.password}')

    monkeypatch.setattr(psycopg, "connect", failing)
    with pytest.raises(DatabaseUnavailableError) as info:
        _db.connect(case.dsn, attempts=1)
    for text in (str(info.value), info.value.dsn, info.value.reason):
        assert_hidden(text, case.password)
    assert "alice" in str(info.value)


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("postgresql://u:never seen@h/db", "never seen"),
        ("postgresql://u:s3cr%zzt@h/db", "s3cr"),
        ("host=h password='ghost secret", "ghost"),
        ("host=h password=two words dbname=x", "words"),
        ("host=h password=nul\x00secret", "secret"),
    ],
    ids=["raw-space", "bad-escape", "unterminated-quote", "unquoted-space", "nul"],
)
def test_an_unreadable_dsn_is_refused_without_showing_its_password(
    dsn: str, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect refuses a DSN libpq cannot read with one line that quotes none of it."""
    monkeypatch.setattr(psycopg, "connect", pytest.fail)
    with pytest.raises(ConfigurationError) as info:
        _db.connect(dsn, attempts=1)
    assert info.value.argument == "dsn"
    assert secret not in str(info.value)
    assert "\n" not in str(info.value)
    assert secret not in _db.redact_dsn(dsn)
    assert secret not in repr(Config(dsn))


def test_a_parse_error_keeps_libpq_syntax_hints() -> None:
    """Quoted pieces of the DSN are withheld, but not libpq's own ``"="``."""
    with pytest.raises(ConfigurationError) as info:
        _db.check_dsn("host=h password=two words")
    assert 'missing "=" after "***"' in str(info.value)


def test_ssl_key_password_is_hidden_too() -> None:
    """sslpassword is a secret like password."""
    redacted = _db.redact_dsn("host=h sslpassword='k3y pass' dbname=d")
    assert "k3y" not in redacted
    assert "sslpassword=***" in redacted


def test_a_dsn_without_password_is_shown_as_given() -> None:
    """Nothing to hide: the DSN is returned unchanged."""
    dsn = "host=h port=5 dbname=d user=u"
    assert _db.redact_dsn(dsn) == dsn


def test_multi_host_and_socket_uris_read_back_the_same() -> None:
    """Hosts lists and socket directories survive the rebuilt URI."""
    for dsn in (
        "postgresql://u:p?w@h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgresql://u:p#w@[::1]:5432/db",
        "postgresql://u:p%40w@/db?host=/var/run/postgresql",
    ):
        redacted = _db.redact_dsn(dsn)
        assert "p?w" not in redacted and "p#w" not in redacted and "p@w" not in redacted
        assert conninfo_to_dict(redacted) == {**conninfo_to_dict(dsn), "password": "***"}


def test_free_text_without_a_known_dsn_falls_back_to_the_dsn_shapes() -> None:
    """A URI with raw ``?`` and ``#`` in its password, and key=value, in an unknown DSN."""
    text = "failed: postgresql://u:un?kn#own@h/db and password='un known' dbname=x"
    redacted = _db.redact(text)
    assert "un?kn#own" not in redacted
    assert "kn#own" not in redacted
    assert "un known" not in redacted
    assert redacted == "failed: postgresql://u:***@h/db and password=*** dbname=x"
