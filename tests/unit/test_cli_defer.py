"""The arguments of ``orchestra defer``, checked before anything connects.

Durations as people type them, the options as ``defer`` arguments, the
payload's JSON with the place of a mistake, the definition looked up in the
app and its payload structured as the worker will read it.
"""

from __future__ import annotations

import datetime as dt

import attrs
import pytest

from orchestra import Config
from orchestra._checks import duration_ms
from orchestra.cli._defer import (
    DeferOptions,
    find_definition,
    parse_options,
    parse_payload,
    require_app,
    structured,
)
from orchestra.errors import ConfigurationError, PayloadError
from tests.unit._support import UNREACHABLE_DSN, define


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", 10_000),
        ("5m", 300_000),
        ("1.5h", 5_400_000),
        ("2d", 172_800_000),
        ("250ms", 250),
        ("30", 30_000),
        ("0.2", 200),
        (" 7 s ", 7_000),
        ("0", 0),
    ],
)
def test_a_duration_is_a_number_of_seconds_or_a_number_and_a_unit(text: str, expected: int) -> None:
    """Plain numbers are seconds; ms, s, m, h and d are units."""
    assert duration_ms(text, "--delay") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-5s", "--delay: must not be negative, got '-5s'"),
        ("soon", "--delay: 'soon' is not a duration"),
        ("5 weeks", "--delay: '5 weeks' is not a duration"),
        ("", "--delay: '' is not a duration"),
        ("11000d", "--delay: must be at most 10 years, got '11000d'"),
        ("9" * 400, "--delay: must be at most 10 years"),
    ],
)
def test_a_bad_duration_is_refused_naming_the_option(text: str, message: str) -> None:
    """Negative, unreadable or absurd durations raise ConfigurationError."""
    with pytest.raises(ConfigurationError) as caught:
        duration_ms(text, "--delay")
    assert str(caught.value).startswith(message)


def test_the_options_become_defers_arguments() -> None:
    """Every option maps to the defer() argument of the same meaning."""
    options = parse_options(
        delay="10s", priority="-5", unique_key="k", resource_key="printer", wait=True, timeout="30s"
    )
    assert options == DeferOptions(
        delay_ms=10_000,
        priority=-5,
        unique_key="k",
        resource_key="printer",
        wait=True,
        timeout_s=30.0,
    )
    assert options.defer_arguments() == {
        "delay_ms": 10_000,
        "run_at": None,
        "priority": -5,
        "unique_key": "k",
        "dedup": None,
        "resource_key": "printer",
        "tags": (),
        "meta": None,
    }
    at = parse_options(run_at="2031-05-01T09:00:00Z", dedup=True)
    assert at.run_at == dt.datetime(2031, 5, 1, 9, tzinfo=dt.UTC)
    assert at.dedup is True


def test_without_options_the_definitions_defaults_apply() -> None:
    """No priority and no dedup setting of the command's own: defer() uses the definition's."""
    assert parse_options().defer_arguments() == {
        "delay_ms": 0,
        "run_at": None,
        "priority": None,
        "unique_key": None,
        "dedup": None,
        "resource_key": None,
        "tags": (),
        "meta": None,
    }


def test_tags_and_meta_become_defers_arguments() -> None:
    """--tag (repeated, repeats dropped) and --meta (a JSON object) are defer()'s tags and meta."""
    options = parse_options(tags=("billing", "eu", "billing"), meta='{"tenant": 42}')
    assert options.defer_arguments()["tags"] == ("billing", "eu")
    assert options.defer_arguments()["meta"] == {"tenant": 42}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": "101"}, "--priority: must be between -100 and 100, got 101"),
        ({"priority": "1.5"}, "--priority: must be an integer from -100 to 100, got '1.5'"),
        ({"run_at": "tomorrow"}, "--run-at: 'tomorrow' is not an ISO 8601 time"),
        ({"run_at": "2031-05-01 09:00"}, "--run-at: '2031-05-01 09:00' has no time zone"),
        ({"delay": "1s", "run_at": "2031-05-01T09:00Z"}, "--run-at: give either --run-at or"),
        ({"dedup": True, "unique_key": "k"}, "--dedup: give either --unique-key or --dedup"),
        ({"timeout": "5s"}, "--timeout: only goes with --wait"),
        ({"unique_key": ""}, "--unique-key: must be a non-empty string"),
        ({"resource_key": "a\x00b"}, "--resource-key: must not contain NUL characters"),
        ({"tags": ("",)}, "--tag: each tag must be a non-empty string"),
        ({"tags": ("a\x1b[31m",)}, "--tag: must not contain control, format or line separator"),
        ({"tags": ("x" * 101,)}, "--tag: each tag must be at most 100 characters, got 101"),
        ({"tags": tuple(str(i) for i in range(21))}, "--tag: at most 20 tags, got 21"),
        ({"meta": "[1]"}, "--meta: must be a JSON object such as"),
        ({"meta": "{"}, "--meta: not valid JSON"),
        ({"meta": '{"a": "' + "x" * 9000 + '"}'}, "--meta: is 9008 bytes as JSON, over the limit"),
    ],
)
def test_bad_options_are_refused_naming_the_option(
    options: dict[str, object], message: str
) -> None:
    """Each bad option or combination raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError) as caught:
        parse_options(**options)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"to": }', "PAYLOAD: not valid JSON: Expecting value at line 1 column 8"),
        # The wording of this one changed in Python 3.13; the place did not.
        ('{\n  "a": 1,\n}', " at line 3 column 1"),
        ("", "PAYLOAD: not valid JSON: Expecting value at line 1 column 1"),
        ("[NaN]", "PAYLOAD: not valid JSON: NaN is not a JSON value"),
        ("1e999", "PAYLOAD: not valid JSON: the number 1e999 is out of range"),
        ("[" * 100_000, "PAYLOAD: nested too deeply"),
    ],
)
def test_a_payload_that_is_not_json_says_where(text: str, message: str) -> None:
    """The error names the mistake and its line and column, or the value JSON lacks."""
    with pytest.raises(ConfigurationError) as caught:
        parse_payload(text)
    assert str(caught.value).startswith(message) or str(caught.value).endswith(message)


def test_a_payload_is_any_json_value() -> None:
    """Objects, arrays, strings, numbers and null."""
    assert parse_payload('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert parse_payload("null") is None
    assert parse_payload('"text"') == "text"


@attrs.frozen
class Parcel:
    """A typed payload."""

    to: str
    weight: int = 1


def test_the_definition_is_found_in_the_app_or_refused_listing_the_known() -> None:
    """A registered name is found; another is refused with the registered ones listed."""
    config = Config(UNREACHABLE_DSN, schema="unit")
    ship = define(config, name="ship")
    define(config, name="bill")
    assert find_definition(config, "ship", "app:config") is ship
    with pytest.raises(ConfigurationError) as caught:
        find_definition(config, "sheep", "app:config")
    assert str(caught.value) == (
        "NAME: --app app:config registers no definition 'sheep'; it registers: bill, ship"
    )
    with pytest.raises(ConfigurationError, match="it registers: none"):
        find_definition(Config(UNREACHABLE_DSN, schema="unit"), "ship", "app:config")
    with pytest.raises(ConfigurationError, match="cannot be deferred without --app"):
        require_app("ship", None)


def test_a_payload_is_structured_into_the_definitions_type() -> None:
    """JSON becomes the payload type, its defaults filled; what does not fit is a PayloadError."""
    config = Config(UNREACHABLE_DSN, schema="unit")
    typed = define(config, name="ship", payload_type=Parcel)
    plain = define(config, name="plain")
    assert structured(typed, {"to": "ada"}) == Parcel("ada", 1)
    assert structured(plain, {"to": "ada"}) == {"to": "ada"}
    with pytest.raises(PayloadError) as caught:
        structured(typed, {"weight": 2})
    assert str(caught.value) == (
        "payload for 'ship': does not fit Parcel: required field missing @ $.to"
    )
