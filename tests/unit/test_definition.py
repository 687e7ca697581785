"""Unit tests of JobDefinition: settings validation, registration, call, and defer's checks."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
from typing import Any

import attrs
import pytest

from orchestra import (
    Backoff,
    Config,
    ConfigurationError,
    JobContext,
    JobDefinition,
    JobHandle,
    PayloadError,
)
from tests.unit._support import ConnectionAttemptedError, define, noop


@attrs.frozen
class Report:
    """An attrs payload with one field."""

    title: str


@attrs.frozen
class NoFields:
    """An attrs payload without fields."""


@dataclasses.dataclass
class EmptyData:
    """A dataclass payload without fields."""


AWARE = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _argument_of(config: Config, **overrides: Any) -> str:
    """The ``argument`` of the ConfigurationError that defining with ``overrides`` raises."""
    with pytest.raises(ConfigurationError) as info:
        define(config, **overrides)
    return info.value.argument


class TestDefaults:
    """A definition built with only a name and a function gets the documented defaults."""

    def test_defaults(self, cfg: Config) -> None:
        """Channel ``_default``, 1 attempt, no release gap, 60 s lock, 12 h timeout, no repeat."""
        definition = define(cfg)
        assert definition.channel == "_default"
        assert definition.num_attempts == 1
        assert definition.release_interval_ms == 0
        assert definition.lock_interval_ms == 60_000
        assert definition.timeout_interval_ms == 43_200_000
        assert definition.repeat_interval_ms is None
        assert definition.cron is None
        assert definition.cron_timezone is None
        assert definition.priority == 0
        assert definition.max_concurrency is None
        assert definition.payload_type is None
        assert definition.backoff == Backoff.exponential()
        assert not definition.is_repeatable
        assert not definition.is_async

    def test_row_params_reflect_settings(self, cfg: Config) -> None:
        """The upsert parameters carry the validated settings: what is stored is the clamped value."""
        definition = define(
            cfg, num_attempts=3, backoff="fixed", repeat_interval_ms=dt.timedelta(minutes=1)
        )
        params = definition.row_params()
        assert params["name"] == "job"
        assert params["num_attempts"] == 3
        assert params["backoff"] == "fixed"
        assert params["backoff_base_ms"] == 5_000
        assert params["repeat_interval_ms"] == 60_000
        assert params["cron"] is None
        assert params["lock_interval_ms"] == 60_000

    def test_repr_names_the_definition(self, cfg: Config) -> None:
        """repr shows the name and channel."""
        assert (
            repr(define(cfg, name="send", channel="mail"))
            == "JobDefinition(name='send', channel='mail')"
        )

    def test_async_function_is_detected(self, cfg: Config) -> None:
        """An ``async def`` job function marks the definition async."""

        async def handler(payload: object) -> None:
            return None

        assert define(cfg, job_function=handler).is_async


class TestNameAndFunction:
    """name and job_function are checked first."""

    @pytest.mark.parametrize(
        "name", ["", "   ", "x" * 129, "a\nb", "tab\there", "nul\x00", "esc\x1b"]
    )
    def test_bad_name(self, cfg: Config, name: str) -> None:
        """An empty, over-long or control-character name raises naming ``name``."""
        assert _argument_of(cfg, name=name) == "name"

    @pytest.mark.parametrize("name", ["del\x7f", "c1\x85", "csi\x9b"])
    def test_name_with_other_control_characters(self, cfg: Config, name: str) -> None:
        """A name holding DEL or a C1 control character raises naming ``name``."""
        assert _argument_of(cfg, name=name) == "name"

    @pytest.mark.parametrize(
        "name", ["x" * 128, "send-mail", "billing.invoice:v2", "caf\u00e9 job"]
    )
    def test_good_names(self, cfg: Config, name: str) -> None:
        """Names up to 128 characters, any printable text, are accepted."""
        assert define(cfg, name=name).name == name

    def test_name_not_a_string(self, cfg: Config) -> None:
        """A non-string name raises naming ``name``."""
        assert _argument_of(cfg, name=42) == "name"

    @pytest.mark.parametrize("function", [None, 42, "noop"])
    def test_function_not_callable(self, cfg: Config, function: object) -> None:
        """A job_function that is not callable raises naming ``job_function``."""
        assert _argument_of(cfg, job_function=function) == "job_function"

    def test_function_with_three_required_arguments(self, cfg: Config) -> None:
        """A job_function that needs three positional arguments is refused."""

        def three(payload: object, ctx: object, extra: object) -> None:
            return None

        assert _argument_of(cfg, job_function=three) == "job_function"

    @pytest.mark.parametrize("shape", ["keyword_only", "three_and_star_args"])
    def test_function_call_can_never_satisfy(self, cfg: Config, shape: str) -> None:
        """A job_function needing a keyword-only or a third positional argument is refused."""

        def needs_keyword(payload: object, *, tenant: str) -> None:
            return None

        def three_and_rest(payload: object, ctx: object, extra: object, *rest: object) -> None:
            return None

        function = needs_keyword if shape == "keyword_only" else three_and_rest
        assert _argument_of(cfg, job_function=function) == "job_function"

    def test_config_must_be_a_config(self) -> None:
        """A config that is not a Config raises naming ``config``."""
        with pytest.raises(ConfigurationError) as info:
            JobDefinition("postgresql://x", name="job", job_function=noop)  # type: ignore[call-overload]
        assert info.value.argument == "config"


class TestSettingsValidation:
    """Every bad setting raises ConfigurationError whose .argument names it."""

    @pytest.mark.parametrize("channel", ["with space", "", "a/b", "x" * 129, "semi;colon"])
    def test_bad_channel(self, cfg: Config, channel: str) -> None:
        """A channel with spaces or other characters outside ``[A-Za-z0-9_.:-]`` is refused."""
        assert _argument_of(cfg, channel=channel) == "channel"

    @pytest.mark.parametrize("value", [0, -1, "3", 3.0, True, 1_000_001])
    def test_bad_num_attempts(self, cfg: Config, value: object) -> None:
        """num_attempts must be an int of at least 1."""
        assert _argument_of(cfg, num_attempts=value) == "num_attempts"

    @pytest.mark.parametrize("value", [101, -101, "1", 1.0, False])
    def test_bad_priority(self, cfg: Config, value: object) -> None:
        """priority must be an int from -100 to 100."""
        assert _argument_of(cfg, priority=value) == "priority"

    @pytest.mark.parametrize("value", [100, -100])
    def test_priority_bounds_accepted(self, cfg: Config, value: int) -> None:
        """The priority bounds themselves are accepted."""
        assert define(cfg, priority=value).priority == value

    @pytest.mark.parametrize("value", [499, 0, -1, dt.timedelta(milliseconds=499), "60000"])
    def test_bad_lock_interval(self, cfg: Config, value: object) -> None:
        """lock_interval_ms below 500 ms or of the wrong type is refused."""
        assert _argument_of(cfg, lock_interval_ms=value) == "lock_interval_ms"

    def test_lock_interval_minimum_accepted(self, cfg: Config) -> None:
        """A lock interval of exactly 500 ms is accepted."""
        assert define(cfg, lock_interval_ms=500).lock_interval_ms == 500

    @pytest.mark.parametrize("argument", ["timeout_interval_ms", "release_interval_ms"])
    @pytest.mark.parametrize("value", [-1, dt.timedelta(seconds=-1), None, 1.5])
    def test_bad_intervals(self, cfg: Config, argument: str, value: object) -> None:
        """Negative or non-integer timeout and release intervals are refused."""
        assert _argument_of(cfg, **{argument: value}) == argument

    @pytest.mark.parametrize("value", [0, -5, dt.timedelta(0), 2.5])
    def test_bad_repeat_interval(self, cfg: Config, value: object) -> None:
        """repeat_interval_ms must be positive, or None for no repeat."""
        assert _argument_of(cfg, repeat_interval_ms=value) == "repeat_interval_ms"

    @pytest.mark.parametrize("value", [0, -1, "2"])
    def test_bad_max_concurrency(self, cfg: Config, value: object) -> None:
        """max_concurrency must be an int of at least 1."""
        assert _argument_of(cfg, max_concurrency=value) == "max_concurrency"

    def test_bad_backoff(self, cfg: Config) -> None:
        """An unknown backoff name is refused naming ``backoff``."""
        assert _argument_of(cfg, backoff="linear") == "backoff"

    def test_timedelta_intervals(self, cfg: Config) -> None:
        """Every interval accepts a timedelta, converted to milliseconds."""
        definition = define(
            cfg,
            lock_interval_ms=dt.timedelta(seconds=30),
            timeout_interval_ms=dt.timedelta(hours=1),
            release_interval_ms=dt.timedelta(milliseconds=250),
            repeat_interval_ms=dt.timedelta(minutes=5),
        )
        assert definition.lock_interval_ms == 30_000
        assert definition.timeout_interval_ms == 3_600_000
        assert definition.release_interval_ms == 250
        assert definition.repeat_interval_ms == 300_000
        assert definition.is_repeatable

    def test_zero_timeout_and_release_accepted(self, cfg: Config) -> None:
        """A timeout or release interval of 0 is allowed (0: no rate limit)."""
        definition = define(cfg, timeout_interval_ms=0, release_interval_ms=0)
        assert (definition.timeout_interval_ms, definition.release_interval_ms) == (0, 0)


class TestCronAndRepeat:
    """cron, cron_timezone and repeat_interval_ms are checked together."""

    @pytest.mark.parametrize("cron", ["not a cron", "61 * * * *", "", "* * *", 5])
    def test_bad_cron(self, cfg: Config, cron: object) -> None:
        """An invalid cron expression raises naming ``cron``."""
        assert _argument_of(cfg, cron=cron) == "cron"

    def test_valid_cron(self, cfg: Config) -> None:
        """A valid cron expression with a time zone makes the definition repeatable."""
        definition = define(cfg, cron="*/5 * * * *", cron_timezone="Europe/Paris")
        assert (definition.cron, definition.cron_timezone) == ("*/5 * * * *", "Europe/Paris")
        assert definition.is_repeatable

    def test_cron_and_repeat_interval(self, cfg: Config) -> None:
        """Giving both cron and repeat_interval_ms raises naming ``cron``."""
        assert _argument_of(cfg, cron="0 * * * *", repeat_interval_ms=60_000) == "cron"

    @pytest.mark.parametrize(
        "zone", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "UTC\x00", 1]
    )
    def test_unknown_timezone(self, cfg: Config, zone: object) -> None:
        """An unknown or malformed cron_timezone raises naming ``cron_timezone``."""
        assert _argument_of(cfg, cron="0 * * * *", cron_timezone=zone) == "cron_timezone"

    def test_timezone_without_cron(self, cfg: Config) -> None:
        """cron_timezone without cron raises naming ``cron_timezone``."""
        assert _argument_of(cfg, cron_timezone="UTC") == "cron_timezone"

    @pytest.mark.parametrize("schedule", [{"repeat_interval_ms": 1_000}, {"cron": "* * * * *"}])
    def test_repeatable_refuses_payload_type(self, cfg: Config, schedule: dict[str, Any]) -> None:
        """A repeatable definition with a non-empty attrs payload_type is refused."""
        assert _argument_of(cfg, payload_type=Report, **schedule) == "payload_type"

    @pytest.mark.parametrize("payload_type", [None, NoFields, EmptyData])
    def test_repeatable_accepts_empty_payload_type(self, cfg: Config, payload_type: object) -> None:
        """A repeatable definition with no payload type or an empty class is accepted."""
        definition = define(cfg, payload_type=payload_type, repeat_interval_ms=1_000)
        assert definition.is_repeatable


class TestRegistration:
    """A definition registers itself in its Config."""

    def test_registered_by_name(self, cfg: Config) -> None:
        """After construction, config.definitions maps the name to the definition."""
        definition = define(cfg, name="a")
        assert cfg.definitions["a"] is definition

    def test_same_name_replaces(self, cfg: Config) -> None:
        """A later definition with the same name replaces the earlier one: the last writer wins."""
        define(cfg, name="a", num_attempts=1)
        later = define(cfg, name="a", num_attempts=5)
        assert cfg.definitions["a"] is later
        assert len(cfg.definitions) == 1

    def test_invalid_definition_is_not_registered(self, cfg: Config) -> None:
        """A definition that fails validation leaves the registry untouched."""
        with pytest.raises(ConfigurationError):
            define(cfg, name="a", num_attempts=0)
        assert "a" not in cfg.definitions

    def test_definitions_is_a_copy(self, cfg: Config) -> None:
        """The mapping returned by config.definitions does not change the registry."""
        define(cfg, name="a")
        snapshot = cfg.definitions
        define(cfg, name="b")
        assert set(snapshot) == {"a"}
        assert set(cfg.definitions) == {"a", "b"}


class TestCall:
    """JobDefinition.call passes the arguments the job function takes."""

    @staticmethod
    def _context(definition: JobDefinition[Any]) -> JobContext:
        return JobContext(
            job_id=7, attempt=1, max_attempts=3, definition=definition, stop=threading.Event()
        )

    def test_payload_and_context(self, cfg: Config) -> None:
        """A two-argument function gets (payload, ctx)."""
        seen: list[tuple[object, ...]] = []

        def handler(payload: object, ctx: JobContext) -> str:
            seen.append((payload, ctx))
            return "done"

        definition = define(cfg, job_function=handler)
        ctx = self._context(definition)
        assert definition.call({"a": 1}, ctx) == "done"
        assert seen == [({"a": 1}, ctx)]

    def test_payload_only(self, cfg: Config) -> None:
        """A one-argument function gets (payload)."""
        seen: list[object] = []
        definition = define(cfg, job_function=seen.append)
        definition.call("p", self._context(definition))
        assert seen == ["p"]

    def test_no_arguments(self, cfg: Config) -> None:
        """A function without parameters is called with nothing."""
        calls: list[str] = []

        def handler() -> None:
            calls.append("called")

        definition = define(cfg, job_function=handler)
        definition.call("ignored", self._context(definition))
        assert calls == ["called"]

    def test_optional_second_argument_is_not_passed(self, cfg: Config) -> None:
        """Parameters with defaults do not count: (payload, ctx=None) gets the payload only."""
        seen: list[object] = []

        def handler(payload: object, ctx: object = "default") -> None:
            seen.append(ctx)

        definition = define(cfg, job_function=handler)
        definition.call("p", self._context(definition))
        assert seen == ["default"]

    def test_var_positional_gets_both(self, cfg: Config) -> None:
        """A ``*args`` function gets (payload, ctx)."""
        seen: list[tuple[object, ...]] = []

        def handler(*args: object) -> None:
            seen.append(args)

        definition = define(cfg, job_function=handler)
        ctx = self._context(definition)
        definition.call("p", ctx)
        assert seen == [("p", ctx)]

    def test_callable_object(self, cfg: Config) -> None:
        """A callable instance is inspected without its ``self``."""

        class Handler:
            def __init__(self) -> None:
                self.seen: list[object] = []

            def __call__(self, payload: object) -> None:
                self.seen.append(payload)

        handler = Handler()
        definition = define(cfg, job_function=handler)
        definition.call("p", self._context(definition))
        assert handler.seen == ["p"]

    def test_context_exposes_attempt_and_stop(self, cfg: Config) -> None:
        """JobContext reports the attempt and whether the worker is stopping."""
        definition = define(cfg)
        stop = threading.Event()
        ctx = JobContext(job_id=7, attempt=2, max_attempts=3, definition=definition, stop=stop)
        assert (ctx.job_id, ctx.attempt, ctx.max_attempts, ctx.definition) == (7, 2, 3, definition)
        assert not ctx.should_stop
        stop.set()
        assert ctx.should_stop


class TestDeferValidation:
    """defer checks its arguments before any SQL; the conftest makes any connection fail."""

    def test_valid_defer_reaches_the_database(self, cfg: Config) -> None:
        """Control: valid arguments get past validation and try to connect."""
        with pytest.raises(ConnectionAttemptedError):
            define(cfg).defer({"a": 1})

    @pytest.mark.parametrize(
        ("options", "argument"),
        [
            ({"run_at": dt.datetime(2030, 1, 1)}, "run_at"),  # noqa: DTZ001 (naive on purpose)
            ({"run_at": "2030-01-01T00:00:00+00:00"}, "run_at"),
            ({"run_at": AWARE, "delay_ms": 1_000}, "run_at"),
            ({"delay_ms": -1}, "delay_ms"),
            ({"delay_ms": dt.timedelta(seconds=-1)}, "delay_ms"),
            ({"delay_ms": 1.5}, "delay_ms"),
            ({"priority": 101}, "priority"),
            ({"priority": -101}, "priority"),
            ({"priority": "1"}, "priority"),
            ({"depends_on": [0]}, "depends_on"),
            ({"depends_on": [-1]}, "depends_on"),
            ({"depends_on": ["x"]}, "depends_on"),
            ({"depends_on": [True]}, "depends_on"),
            ({"depends_on": [1.0]}, "depends_on"),
            ({"depends_on": "12"}, "depends_on"),
            ({"depends_on": b"12"}, "depends_on"),
        ],
    )
    def test_bad_arguments_raise_before_connecting(
        self, cfg: Config, options: dict[str, Any], argument: str
    ) -> None:
        """Bad run_at, delay_ms, priority or depends_on raise ConfigurationError, not a connection."""
        definition = define(cfg)
        with pytest.raises(ConfigurationError) as info:
            definition.defer({"a": 1}, **options)
        assert info.value.argument == argument

    def test_depends_on_handle_with_bad_id(self, cfg: Config) -> None:
        """A JobHandle with a non-positive id is refused like a bad int."""
        with pytest.raises(ConfigurationError) as info:
            define(cfg).defer(None, depends_on=[JobHandle(0, cfg)])
        assert info.value.argument == "depends_on"

    def test_bad_payload_raises_before_connecting(self, cfg: Config) -> None:
        """A payload of the wrong type raises PayloadError before any connection."""
        with pytest.raises(PayloadError):
            define(cfg, payload_type=Report).defer({"title": "not an instance"})

    def test_oversized_payload_raises_before_connecting(self) -> None:
        """A payload over the Config's max_payload_bytes raises PayloadError before any connection."""
        config = Config("postgresql://nobody@127.0.0.1:1/none", schema="unit", max_payload_bytes=10)
        with pytest.raises(PayloadError):
            define(config).defer("x" * 20)

    def test_async_defer_checks_arguments_first(self, cfg: Config) -> None:
        """defer_async raises the same ConfigurationError before connecting."""
        definition = define(cfg)
        with pytest.raises(ConfigurationError) as info:
            asyncio.run(definition.defer_async({"a": 1}, delay_ms=-1))
        assert info.value.argument == "delay_ms"

    @pytest.mark.parametrize("payload_type", [NoFields, EmptyData])
    def test_repeatable_with_empty_class_defers_without_payload(
        self, cfg: Config, payload_type: object
    ) -> None:
        """defer() of a repeatable definition with an empty payload class passes validation."""
        definition = define(cfg, payload_type=payload_type, repeat_interval_ms=1_000)
        with pytest.raises(ConnectionAttemptedError):
            definition.defer()

    def test_repeatable_without_type_defers_without_payload(self, cfg: Config) -> None:
        """defer() of a repeatable definition without payload type gets past validation."""
        with pytest.raises(ConnectionAttemptedError):
            define(cfg, repeat_interval_ms=1_000).defer()


class TestDeferManyValidation:
    """defer_many checks every payload before any SQL."""

    @pytest.mark.parametrize("payloads", [{"a": 1}, "abc", b"abc"])
    def test_single_value_instead_of_list(self, cfg: Config, payloads: Any) -> None:
        """A dict or string instead of a list of payloads raises naming ``payloads``."""
        with pytest.raises(ConfigurationError) as info:
            define(cfg).defer_many(payloads)
        assert info.value.argument == "payloads"

    def test_empty_list_does_not_connect(self, cfg: Config) -> None:
        """defer_many([]) returns no handles without touching the database."""
        assert define(cfg).defer_many([]) == []

    def test_one_bad_payload_fails_all(self, cfg: Config) -> None:
        """One payload that cannot be encoded raises PayloadError before any connection."""
        with pytest.raises(PayloadError):
            define(cfg).defer_many([{"a": 1}, {"b": object()}])

    def test_options_checked(self, cfg: Config) -> None:
        """Bad shared options raise ConfigurationError before any connection."""
        with pytest.raises(ConfigurationError) as info:
            define(cfg).defer_many([{"a": 1}], priority=500)
        assert info.value.argument == "priority"

    def test_generator_accepted(self, cfg: Config) -> None:
        """A generator of valid payloads gets past validation."""
        with pytest.raises(ConnectionAttemptedError):
            define(cfg).defer_many({"n": n} for n in range(3))

    def test_async_single_value_instead_of_list(self, cfg: Config) -> None:
        """defer_many_async refuses a dict too, before connecting."""
        with pytest.raises(ConfigurationError) as info:
            asyncio.run(define(cfg).defer_many_async({"a": 1}))
        assert info.value.argument == "payloads"


class TestJobHandle:
    """JobHandle is a small value object."""

    def test_int_and_equality(self, cfg: Config) -> None:
        """A handle converts to its id and compares by id only."""
        other = Config("postgresql://nobody@127.0.0.1:1/none", schema="other")
        assert int(JobHandle(5, cfg)) == 5
        assert JobHandle(5, cfg) == JobHandle(5, other)
        assert JobHandle(5, cfg) != JobHandle(6, cfg)
