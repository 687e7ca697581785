"""Unit tests of orchestra._backoff: retry delay policies and millisecond arguments."""

from __future__ import annotations

import datetime as dt
import random

import attrs
import pytest

from orchestra import Backoff, ConfigurationError
from orchestra._checks import milliseconds


class TestBackoffParse:
    """Backoff.parse turns a name or a Backoff into a policy."""

    def test_none(self) -> None:
        """``none`` retries at once."""
        backoff = Backoff.parse("none")
        assert backoff.kind == "none"
        assert backoff.nominal_delay_ms(1) == 0

    def test_fixed(self) -> None:
        """``fixed`` uses the default fixed delay."""
        backoff = Backoff.parse("fixed")
        assert backoff.kind == "fixed"
        assert backoff.base_ms == 5_000

    def test_exponential(self) -> None:
        """``exponential`` starts at 2 s."""
        backoff = Backoff.parse("exponential")
        assert backoff.kind == "exponential"
        assert backoff.base_ms == 2_000

    def test_instance_is_returned_as_is(self) -> None:
        """A Backoff passes through unchanged."""
        backoff = Backoff.exponential(100, max_ms=1_000)
        assert Backoff.parse(backoff) is backoff

    @pytest.mark.parametrize("value", ["None", "EXPONENTIAL", "linear", "", None, 3, object()])
    def test_rejects_other_values(self, value: object) -> None:
        """Anything else raises ConfigurationError naming ``backoff``."""
        with pytest.raises(ConfigurationError) as info:
            Backoff.parse(value)
        assert info.value.argument == "backoff"


class TestBackoffConstruction:
    """Backoff validates its fields."""

    def test_unknown_kind(self) -> None:
        """A kind outside none/fixed/exponential is refused."""
        with pytest.raises(ConfigurationError) as info:
            Backoff("linear", 100)  # type: ignore[arg-type]
        assert info.value.argument == "backoff"

    @pytest.mark.parametrize("jitter", [-0.1, 1.5, float("nan")])
    def test_jitter_out_of_range(self, jitter: float) -> None:
        """Jitter must lie between 0 and 1."""
        with pytest.raises(ConfigurationError) as info:
            Backoff.exponential(jitter=jitter)
        assert info.value.argument == "backoff.jitter"

    def test_negative_base(self) -> None:
        """A negative base delay is refused, naming the argument."""
        with pytest.raises(ConfigurationError) as info:
            Backoff.exponential(-1)
        assert info.value.argument == "backoff.base_ms"

    def test_negative_fixed_delay(self) -> None:
        """A negative fixed delay is refused, naming the argument."""
        with pytest.raises(ConfigurationError) as info:
            Backoff.fixed(-5)
        assert info.value.argument == "backoff.delay_ms"

    def test_frozen(self) -> None:
        """A Backoff cannot be changed after construction."""
        backoff = Backoff.none()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            backoff.base_ms = 5  # type: ignore[misc]

    def test_timedelta_arguments(self) -> None:
        """Delays may be given as timedelta."""
        backoff = Backoff.exponential(dt.timedelta(seconds=3), max_ms=dt.timedelta(minutes=1))
        assert (backoff.base_ms, backoff.max_ms) == (3_000, 60_000)
        assert Backoff.fixed(dt.timedelta(milliseconds=250)).base_ms == 250


class TestBackoffDelays:
    """nominal_delay_ms and delay_ms give the wait after a failed attempt."""

    def test_exponential_nominal_delays(self) -> None:
        """Failed attempts 1, 2, 3 wait 2, 4, 8 s: the k-th retry waits at least 2^k s."""
        backoff = Backoff.parse("exponential")
        assert [backoff.nominal_delay_ms(k) for k in (1, 2, 3)] == [2_000, 4_000, 8_000]
        for k in range(1, 12):
            assert backoff.nominal_delay_ms(k) >= 2**k * 1_000

    def test_exponential_capped_by_max(self) -> None:
        """The nominal delay never exceeds max_ms."""
        backoff = Backoff.exponential(1_000, max_ms=5_000)
        assert [backoff.nominal_delay_ms(k) for k in range(1, 6)] == [
            1_000,
            2_000,
            4_000,
            5_000,
            5_000,
        ]

    def test_exponential_huge_attempt_is_capped(self) -> None:
        """An absurd attempt number neither overflows nor exceeds the cap."""
        backoff = Backoff.parse("exponential")
        assert backoff.nominal_delay_ms(10_000) == backoff.max_ms

    def test_attempt_zero_uses_base(self) -> None:
        """An attempt number below 1 is treated as the first failure."""
        assert Backoff.exponential(300).nominal_delay_ms(0) == 300

    @pytest.mark.parametrize("seed", range(20))
    @pytest.mark.parametrize("kind", ["fixed", "exponential"])
    def test_jitter_only_adds(self, seed: int, kind: str) -> None:
        """delay_ms lies between nominal and nominal * (1 + jitter), never below."""
        rng = random.Random(seed)
        backoff = Backoff.parse(kind)
        for attempt in range(1, 8):
            nominal = backoff.nominal_delay_ms(attempt)
            delay = backoff.delay_ms(attempt, rng)
            assert nominal <= delay <= nominal * (1 + backoff.jitter)

    def test_jitter_is_reproducible_with_a_seeded_rng(self) -> None:
        """The same seed gives the same delays."""
        backoff = Backoff.parse("exponential")
        first = [backoff.delay_ms(k, random.Random(7)) for k in range(1, 6)]
        second = [backoff.delay_ms(k, random.Random(7)) for k in range(1, 6)]
        assert first == second

    def test_zero_jitter_is_exact(self) -> None:
        """Without jitter the delay is the nominal delay."""
        backoff = Backoff.exponential(100, jitter=0.0)
        assert backoff.delay_ms(3, random.Random(1)) == 400

    def test_none_is_zero(self) -> None:
        """``none`` waits 0 ms after any failure."""
        backoff = Backoff.none()
        assert [backoff.delay_ms(k, random.Random(0)) for k in range(1, 5)] == [0, 0, 0, 0]

    def test_fixed_is_base(self) -> None:
        """``fixed`` waits its base delay after every failure."""
        backoff = Backoff.fixed(1_500)
        assert {backoff.nominal_delay_ms(k) for k in range(1, 6)} == {1_500}


class TestMilliseconds:
    """milliseconds() accepts an int of ms or a timedelta, and names the argument otherwise."""

    def test_int(self) -> None:
        """An int is returned unchanged."""
        assert milliseconds(1_500, "x") == 1_500
        assert milliseconds(0, "x") == 0

    def test_timedelta(self) -> None:
        """A timedelta is converted to whole milliseconds."""
        assert milliseconds(dt.timedelta(seconds=2, milliseconds=5), "x") == 2_005

    def test_none_allowed(self) -> None:
        """None passes only with allow_none."""
        assert milliseconds(None, "x", allow_none=True) is None

    def test_none_refused(self) -> None:
        """None without allow_none names the argument."""
        with pytest.raises(ConfigurationError) as info:
            milliseconds(None, "lock_interval_ms")
        assert info.value.argument == "lock_interval_ms"

    @pytest.mark.parametrize(
        "value", [-1, dt.timedelta(seconds=-1), True, False, 1.0, 1.5, "100", b"1", [1]]
    )
    def test_rejects(self, value: object) -> None:
        """Negatives, bools, floats and strings raise ConfigurationError naming the argument."""
        with pytest.raises(ConfigurationError, match=r"^delay_ms: ") as info:
            milliseconds(value, "delay_ms")
        assert info.value.argument == "delay_ms"
