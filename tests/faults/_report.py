"""The fault battery's scale and its one-line-per-case report.

Every case of ``tests/faults`` takes two fixtures (defined in ``conftest.py``):

* ``scale`` (:class:`Scale`): ``scale.pick(short, full)`` chooses a size. Short
  (the default, run by ``make test``) keeps each case to seconds; full
  (``ORCHESTRA_FAULTS=full``, run by ``make faults``) is thousands of jobs and
  many faults.
* ``report`` (:class:`Report`): ``report.record(CaseResult(...))`` stores the
  case's line. Record it *before* asserting, so a failing case still shows
  its counts.

The lines travel on the test reports' ``user_properties`` (which pytest-xdist
sends from its workers to the controller), and this module's
``pytest_terminal_summary`` prints them as one table at the end of the run,
with or without ``-s`` and under ``-n 2``. The module is registered as a
plugin by ``tests/conftest.py`` so that the xdist controller, which never
imports ``tests/faults/conftest.py`` when it is run on ``tests/``, has it too.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, TypeVar

import attrs
import pytest

#: The environment variable choosing the battery's size; ``full`` for the big one.
SCALE_ENV = "ORCHESTRA_FAULTS"
#: The ``user_properties`` key a case's line travels under.
PROPERTY = "orchestra_fault_case"
#: The pytest-timeout of one case in the full battery (the short one keeps the default).
FULL_TIMEOUT_S = 1_800

T = TypeVar("T")


@attrs.frozen
class Scale:
    """How big the battery is: short (seconds per case) or full."""

    full: bool

    @classmethod
    def from_env(cls) -> Scale:
        """Full when ``ORCHESTRA_FAULTS=full``, else short."""
        return cls(full=os.environ.get(SCALE_ENV, "").strip().lower() == "full")

    @property
    def name(self) -> str:
        """``"full"`` or ``"short"``, for report lines."""
        return "full" if self.full else "short"

    def pick(self, short: T, full: T) -> T:
        """``full`` in the full battery, else ``short``."""
        return full if self.full else short


@attrs.frozen
class CaseResult:
    """What one case did: the counts of its report line.

    ``doubled`` counts extra runs of a job (allowed: delivery is at least
    once); ``duplicate_successes`` counts jobs whose success was recorded more
    than once (never allowed). ``note`` is free text for anything else worth
    one glance (e.g. ``"ticks=41 takeovers=5"``).
    """

    case: str
    jobs: int
    faults: int
    lost: int
    doubled: int
    duplicate_successes: int
    seconds: float
    note: str = ""

    def line(self) -> str:
        """The one-line form, also printed as the case runs."""
        text = (
            f"{self.case}: jobs={self.jobs} faults={self.faults} lost={self.lost}"
            f" doubled={self.doubled} duplicate_successes={self.duplicate_successes}"
            f" time={self.seconds:.1f}s"
        )
        return f"{text} {self.note}" if self.note else text


class Report:
    """Collects the result lines of one test (usually one, several for parametrized loops)."""

    def __init__(self, node: pytest.Item, scale: Scale) -> None:
        self._node = node
        self.scale = scale
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the test started (since the fixture was set up)."""
        return time.monotonic() - self.started

    def record(self, result: CaseResult) -> str:
        """Store ``result`` for the end-of-run table, print its line, return the line."""
        named = attrs.evolve(result, case=f"{result.case}[{self.scale.name}]")
        self._node.user_properties.append((PROPERTY, json.dumps(attrs.asdict(named))))
        line = named.line()
        print(f"\nfaults {line}")
        return line


_COLUMNS = ("case", "jobs", "faults", "lost", "doubled", "duplicate_successes", "seconds")
#: (outcome, result) of every case reported in this process (the controller under xdist).
_ROWS: list[tuple[str, CaseResult]] = []


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects on the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/faults ``faults``; give full cases a long timeout."""
    full = Scale.from_env().full
    for item in items:
        if item.path.parent.name != "faults" or item.path.parent.parent.name != "tests":
            continue
        item.add_marker(pytest.mark.faults)
        if full and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(FULL_TIMEOUT_S))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the lines of each case's call phase (sent by xdist workers too)."""
    if report.when != "call":
        return
    for key, value in report.user_properties:
        if key == PROPERTY:
            data: dict[str, Any] = json.loads(str(value))
            _ROWS.append((report.outcome, CaseResult(**data)))


def format_table(rows: list[tuple[str, CaseResult]]) -> list[str]:
    """The results as aligned text lines, a header first."""
    header = [*_COLUMNS, "outcome", "note"]
    body = [
        [
            r.case, str(r.jobs), str(r.faults), str(r.lost), str(r.doubled),
            str(r.duplicate_successes), f"{r.seconds:.1f}", outcome, r.note,
        ]
        for outcome, r in sorted(rows, key=lambda row: row[1].case)
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Print every case's line in one table at the end of the run."""
    if not _ROWS:
        return
    terminalreporter.write_sep("=", f"fault battery ({Scale.from_env().name})")
    for line in format_table(_ROWS):
        terminalreporter.write_line(line)
