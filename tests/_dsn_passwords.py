"""Passwords made of every character libpq accepts, written into DSNs in every form.

Shared by the redaction tests (unit, integration, e2e). Each password is
``Pw<character>9z``: the character under test sits inside the password, so a
redaction that stops at it (as a pattern over the string would) leaves a
visible piece behind.
"""

from __future__ import annotations

import urllib.parse

import attrs
import pytest
from psycopg.conninfo import conninfo_to_dict

#: Every printable ASCII character, and a few beyond ASCII (libpq takes any byte but NUL).
CHARACTERS = (
    *(chr(code) for code in range(0x20, 0x7F)),
    "é",
    "ß",
    "Ж",
    "密",
    "🔑",
    "\u00a0",
)


def password_with(character: str) -> str:
    """The test password holding ``character``."""
    return f"Pw{character}9z"


def character_id(character: str) -> str:
    """A readable test id for ``character``."""
    return f"U+{ord(character):04X}"


@attrs.frozen
class Case:
    """A DSN whose password is ``password``, written in the form ``form``."""

    form: str
    character: str
    password: str
    dsn: str

    @property
    def id(self) -> str:
        return f"{self.form}-{character_id(self.character)}"


def kv_quote(value: str) -> str:
    """``value`` quoted as libpq reads it in key=value form."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dsn_forms(password: str, *, host: str, port: str, dbname: str, user: str) -> dict[str, str]:
    """``password`` in each DSN form libpq reads it from, keyed by form.

    ``uri-raw`` (the password unencoded, as libpq accepts ``?``, ``#``, ``:``...)
    is only there when libpq reads back exactly ``password`` from it.
    """
    encoded = urllib.parse.quote(password, safe="")
    # A socket directory (the embedded server's) is a host only percent-encoded.
    netloc = f"{urllib.parse.quote(host, safe='')}:{port}"
    forms = {
        "uri-encoded": f"postgresql://{user}:{encoded}@{netloc}/{dbname}",
        "uri-raw": f"postgresql://{user}:{password}@{netloc}/{dbname}",
        "uri-query": f"postgresql://{user}@{netloc}/{dbname}?password={encoded}",
        "key-value": f"host={host} port={port} dbname={dbname} user={user} "
        f"password={kv_quote(password)}",
    }
    for form, dsn in list(forms.items()):
        try:
            read = conninfo_to_dict(dsn).get("password")
        except Exception:
            read = None
        if read != password:
            assert form == "uri-raw", f"libpq does not read the password back from {form}"
            del forms[form]
    return forms


def cases(
    *,
    host: str = "127.0.0.1",
    port: str = "1",
    dbname: str = "orchestra_db",
    user: str = "alice",
    characters: tuple[str, ...] = CHARACTERS,
    forms: tuple[str, ...] | None = None,
) -> list[Case]:
    """A case per character and DSN form."""
    found = []
    for character in characters:
        password = password_with(character)
        written = dsn_forms(password, host=host, port=port, dbname=dbname, user=user)
        for form, dsn in written.items():
            if forms is None or form in forms:
                found.append(Case(form, character, password, dsn))
    return found


def params(found: list[Case]) -> list[object]:
    """``found`` as pytest parameters with readable ids."""
    return [pytest.param(case, id=case.id) for case in found]


def assert_hidden(text: str, password: str) -> None:
    """Neither ``password`` nor its percent-encoding appears in ``text``."""
    assert password not in text, text
    assert urllib.parse.quote(password, safe="") not in text, text
    assert kv_quote(password)[1:-1] not in text, text
