"""Retry backoff: how long a failed attempt waits before the next one."""

from __future__ import annotations

import datetime as dt
import random
from typing import Literal

import attrs

from orchestra import _checks
from orchestra.errors import ConfigurationError

BackoffKind = Literal["none", "fixed", "exponential"]
BACKOFF_KINDS: tuple[BackoffKind, ...] = ("none", "fixed", "exponential")

#: exponential: the k-th retry waits base * 2**(k-1) plus jitter (2 s, 4 s, 8 s ...).
EXPONENTIAL_BASE_MS_DEFAULT = 2_000
FIXED_DELAY_MS_DEFAULT = 5_000
BACKOFF_MAX_MS_DEFAULT = 3_600_000
#: Jitter is added, never subtracted, so a retry never runs before its nominal
#: delay; it spreads retries of a burst of failures.
JITTER_FRACTION_DEFAULT = 0.1


@attrs.frozen
class Backoff:
    """A retry delay policy.

    Attributes:
        kind: ``none`` (retry at once), ``fixed`` or ``exponential``.
        base_ms: the fixed delay, or the first exponential delay.
        max_ms: the longest delay, before jitter.
        jitter: the fraction of the delay added at random (0 to 1).
    """

    kind: BackoffKind
    base_ms: int
    max_ms: int = BACKOFF_MAX_MS_DEFAULT
    jitter: float = JITTER_FRACTION_DEFAULT

    def __attrs_post_init__(self) -> None:
        if self.kind not in BACKOFF_KINDS:
            raise ConfigurationError(
                "backoff", f"must be one of {', '.join(BACKOFF_KINDS)}, got {self.kind!r}"
            )
        _checks.milliseconds(self.base_ms, "backoff.base_ms")
        _checks.milliseconds(self.max_ms, "backoff.max_ms")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(
                "backoff.jitter", f"must be between 0 and 1, got {self.jitter}"
            )

    @classmethod
    def none(cls) -> Backoff:
        """Retry at once."""
        return cls("none", 0, 0, 0.0)

    @classmethod
    def fixed(
        cls,
        delay_ms: int | dt.timedelta = FIXED_DELAY_MS_DEFAULT,
        *,
        jitter: float = JITTER_FRACTION_DEFAULT,
    ) -> Backoff:
        """Wait the same delay before every retry."""
        delay = _checks.milliseconds(delay_ms, "backoff.delay_ms") or 0
        return cls("fixed", delay, max(delay, 0), jitter)

    @classmethod
    def exponential(
        cls,
        base_ms: int | dt.timedelta = EXPONENTIAL_BASE_MS_DEFAULT,
        *,
        max_ms: int | dt.timedelta = BACKOFF_MAX_MS_DEFAULT,
        jitter: float = JITTER_FRACTION_DEFAULT,
    ) -> Backoff:
        """Double the delay after every failure: base, 2 base, 4 base ..."""
        return cls(
            "exponential",
            _checks.milliseconds(base_ms, "backoff.base_ms") or 0,
            _checks.milliseconds(max_ms, "backoff.max_ms") or 0,
            jitter,
        )

    @classmethod
    def parse(cls, value: object) -> Backoff:
        """Accept a Backoff or one of the names ``none``, ``fixed``, ``exponential``."""
        if isinstance(value, Backoff):
            return value
        if value == "none":
            return cls.none()
        if value == "fixed":
            return cls.fixed()
        if value == "exponential":
            return cls.exponential()
        raise ConfigurationError(
            "backoff", f"must be 'none', 'fixed', 'exponential' or a Backoff, got {value!r}"
        )

    def nominal_delay_ms(self, failed_attempt: int) -> int:
        """The delay after the ``failed_attempt``-th attempt failed, before jitter."""
        if self.kind == "none":
            return 0
        if self.kind == "fixed":
            return self.base_ms
        exponent = min(max(failed_attempt - 1, 0), 62)
        return min(self.max_ms, self.base_ms * (1 << exponent))

    def delay_ms(self, failed_attempt: int, rng: random.Random | None = None) -> int:
        """The delay to use, nominal plus up to ``jitter`` of it."""
        nominal = self.nominal_delay_ms(failed_attempt)
        if nominal == 0 or self.jitter == 0:
            return nominal
        draw: float = (rng or random).random()
        return nominal + int(draw * self.jitter * nominal)
