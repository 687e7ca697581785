"""Daemon, definition and channel names refuse control, format and line separator characters.

A name is printed at the start of log lines and in terminals and pages: a line
break in it would forge log lines, an escape sequence or a bidi override would
disguise what is shown. The error names the argument and shows the character
escaped, and nothing is registered or written.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from orchestra import Config, ConfigurationError, Orchestrator, Worker
from orchestra._names import check_printable, escape_unprintable
from tests.unit._support import define

#: Characters of every refused category, with how the error shows them.
REFUSED = [
    pytest.param("\n", "\\n", id="Cc-line-feed"),
    pytest.param("\r", "\\r", id="Cc-carriage-return"),
    pytest.param("\t", "\\t", id="Cc-tab"),
    pytest.param("\x00", "\\x00", id="Cc-nul"),
    pytest.param("\x1b", "\\x1b", id="Cc-escape"),
    pytest.param("\x7f", "\\x7f", id="Cc-delete"),
    pytest.param("\x85", "\\x85", id="Cc-next-line"),
    pytest.param("\u202e", "\\u202e", id="Cf-right-to-left-override"),
    pytest.param("\u2066", "\\u2066", id="Cf-left-to-right-isolate"),
    pytest.param("\u200b", "\\u200b", id="Cf-zero-width-space"),
    pytest.param("\ufeff", "\\ufeff", id="Cf-byte-order-mark"),
    pytest.param("\U000e0041", "\\U000e0041", id="Cf-tag-latin-a"),
    pytest.param("\u2028", "\\u2028", id="Zl-line-separator"),
    pytest.param("\u2029", "\\u2029", id="Zp-paragraph-separator"),
]
#: Printable names, non-ASCII and spaces included, stay allowed.
ACCEPTED = ["worker-1", "wörker", "ワーカー", "two words", "🎉", "a\u00a0b"]


def _name_with(character: str) -> str:
    return f"w{character}2024-01-01 CRITICAL forged"


def _assert_clear_error(error: ConfigurationError, argument: str, shown: str) -> None:
    message = str(error)
    assert error.argument == argument
    assert message.startswith(f"{argument}: ")
    assert shown in message
    assert "at index 1" in message
    # The message itself is one printable line.
    assert all(unicodedata.category(c) not in {"Cc", "Cf", "Zl", "Zp"} for c in message)


@pytest.mark.parametrize(("character", "shown"), REFUSED)
def test_worker_name_refuses_the_character(cfg: Config, character: str, shown: str) -> None:
    """Worker(name=...) raises ConfigurationError naming ``name`` and the escaped character."""
    with pytest.raises(ConfigurationError) as info:
        Worker(cfg, name=_name_with(character))
    _assert_clear_error(info.value, "name", shown)


@pytest.mark.parametrize(("character", "shown"), REFUSED)
def test_orchestrator_name_refuses_the_character(cfg: Config, character: str, shown: str) -> None:
    """Orchestrator(name=...) refuses it the same way."""
    with pytest.raises(ConfigurationError) as info:
        Orchestrator(cfg, name=_name_with(character))
    _assert_clear_error(info.value, "name", shown)


@pytest.mark.parametrize(("character", "shown"), REFUSED)
def test_definition_name_refuses_the_character_and_registers_nothing(
    cfg: Config, character: str, shown: str
) -> None:
    """JobDefinition(name=...) raises before registering the definition."""
    with pytest.raises(ConfigurationError) as info:
        define(cfg, name=_name_with(character))
    _assert_clear_error(info.value, "name", shown)
    assert cfg.definitions == {}


@pytest.mark.parametrize(("character", "shown"), REFUSED)
def test_channel_refuses_the_character(cfg: Config, character: str, shown: str) -> None:
    """A definition's channel and a worker's channel refuse it too."""
    for build in (
        lambda: define(cfg, channel=f"c{character}x"),
        lambda: Worker(cfg, channel=f"c{character}x"),
    ):
        with pytest.raises(ConfigurationError) as info:
            build()
        assert info.value.argument == "channel"
    assert cfg.definitions == {}


@pytest.mark.parametrize("name", ACCEPTED)
def test_printable_names_are_accepted(cfg: Config, name: str) -> None:
    """Non-ASCII letters, emoji, spaces and no-break spaces are fine in names."""
    assert Worker(cfg, name=name).name == name
    assert Orchestrator(cfg, name=name).name == name
    assert define(cfg, name=name).name == name


@pytest.mark.parametrize(("character", "shown"), REFUSED)
def test_check_printable_names_the_argument_given(character: str, shown: str) -> None:
    """The argument is named as the caller spelled it (a CLI option, say)."""
    with pytest.raises(ConfigurationError) as info:
        check_printable(_name_with(character), "--name")
    _assert_clear_error(info.value, "--name", shown)


def test_escape_unprintable_escapes_all_but_what_is_kept() -> None:
    """Escapes make control characters visible; kept ones (line breaks of a traceback) stay."""
    text = "a\nb\x1b[31mc\u202ed"
    assert escape_unprintable(text) == "a\\nb\\x1b[31mc\\u202ed"
    assert escape_unprintable(text, "\n") == "a\nb\\x1b[31mc\\u202ed"
    plain: Any = "nothing to escape"
    assert escape_unprintable(plain) is plain
