"""Snooze: a job function asks to run again later, without spending an attempt.

A control-flow exception, not an error: a job that snoozes has not failed,
so :class:`Snooze` does not derive from :class:`~orchestra.errors.OrchestraError`
(which every error orchestra raises on purpose derives from). The worker,
its child processes and ``orchestra.testing`` read it the same way
(``orchestra/_worker/_executor.py``, ``_child.py``).
"""

from __future__ import annotations

import datetime as dt
import math

from orchestra._checks import MAX_INTERVAL_MS, is_number
from orchestra.errors import ConfigurationError

__all__ = ["MAX_SNOOZE_S", "Snooze", "snooze_seconds"]

#: Longest snooze: the longest interval orchestra accepts anywhere (10 years).
MAX_SNOOZE_S = MAX_INTERVAL_MS // 1000


def snooze_seconds(value: object) -> float:
    """``value`` as seconds to snooze for, or ConfigurationError naming what is wrong."""
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
    # The range first: math.isfinite of an int beyond a float's range overflows.
    if not is_number(seconds) or not 0 <= seconds <= MAX_SNOOZE_S or not math.isfinite(seconds):
        raise ConfigurationError(
            "Snooze seconds",
            f"must be a number from 0 to {MAX_SNOOZE_S} (10 years) or a timedelta, got {value!r}",
        )
    return float(seconds)


class Snooze(Exception):  # noqa: N818 (not an error: the name says what it does)
    """Run this job again in ``seconds``, without spending an attempt.

    Raise it from a job function (``raise Snooze(30)``), or return
    ``ctx.snooze(30)`` (which builds one): the job goes back to ``available``,
    due ``seconds`` from now; its attempt counter is refunded, so a job may
    snooze any number of times and still has its whole ``num_attempts`` when
    it runs again; its attempt log gets a ``snoozed`` entry saying for how
    long. ``seconds`` is a number from 0 to 10 years, or a ``timedelta``;
    anything else raises :class:`~orchestra.ConfigurationError` here, which
    fails the attempt like any exception of the job.

    Attributes:
        seconds: how long the job waits before it runs again.
    """

    def __init__(self, seconds: float | dt.timedelta) -> None:
        self.seconds = snooze_seconds(seconds)
        # The checked seconds are its args, so that it pickles and unpickles.
        super().__init__(self.seconds)

    def __str__(self) -> str:
        return f"snooze for {self.seconds:g} s"

    def __repr__(self) -> str:
        return f"Snooze({self.seconds!r})"
