"""A type checker ties a JobDefinition's payload type to its function and to ``defer``.

It also sees the management API through ``definition.config`` and
``handle.config``, which are the Config the definition was built with.

A small program using orchestra is checked with mypy (with the project's
settings): every line marked ``# expected: <code>`` must be reported with that
error code, and no other line of it may be.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
from typing import Any, assert_type

import attrs

from orchestra import Config, Job, JobContext, JobDefinition, Workflow, chain, chord, group


@attrs.frozen
class Report:
    title: str


@attrs.frozen
class Invoice:
    number: int


def render(report: Report, ctx: JobContext) -> str:
    return report.title


def render_alone(report: Report) -> str:
    return report.title


async def render_later(report: Report) -> str:
    return report.title


def bill(invoice: Invoice) -> None:
    pass


def tick() -> None:
    pass


def cancel_the_other(other_id: int, ctx: JobContext) -> None:
    ctx.definition.config.jobs.cancel(other_id)


async def main(config: Config) -> None:
    reports = JobDefinition(config, name="report", job_function=render, payload_type=Report)
    reports.defer(Report("q3"))
    await reports.defer_async(Report("q3"))
    reports.defer_many([Report("q3"), Report("q4")])
    reports.defer(Invoice(7))  # expected: arg-type
    await reports.defer_async(Invoice(7))  # expected: arg-type
    reports.defer_many([Invoice(7)])  # expected: list-item

    alone = JobDefinition(config, name="alone", job_function=render_alone, payload_type=Report)
    alone.defer(Report("q3"))
    alone.defer(Invoice(7))  # expected: arg-type

    later = JobDefinition(config, name="later", job_function=render_later, payload_type=Report)
    later.defer(Invoice(7))  # expected: arg-type

    without_arguments = JobDefinition(config, name="tick", job_function=tick, payload_type=Report)
    without_arguments.defer(Report("q3"))
    without_arguments.defer(Invoice(7))  # expected: arg-type

    JobDefinition(config, name="bill", job_function=bill, payload_type=Report)  # expected: arg-type

    plain = JobDefinition(config, name="plain", job_function=tick)
    plain.defer({"any": ["json", 1]})
    plain.defer_many([{"a": 1}, [2], "three"])

    # Without payload_type the function receives plain JSON, whatever its
    # parameter says: the definition takes any payload.
    by_function = JobDefinition(config, name="by_function", job_function=render_alone)
    assert_type(by_function, JobDefinition[Any])
    by_function.defer({"title": "q3"})

    found: Job = plain.config.jobs.get(1)
    handle = plain.defer({})
    assert_type(await handle.config.jobs_async.get(handle), Job)
    handle.config.jobs.no_such_method()  # expected: attr-defined
    JobDefinition(config, name="canceller", job_function=cancel_the_other, payload_type=int)

    # Workflows: a job of a workflow is typed as defer's payload is.
    reports.job(Invoice(7))  # expected: arg-type
    assert_type(chord([reports.job(Report("q3"))], then=plain.job({})), Workflow)
    group([reports.job(Report("q3")), Report("q4")])  # expected: list-item
    chain([reports.job(Report("q3")), alone.job(Report("q4"))])
"""

EXPECTED_RE = re.compile(r"#\s*expected:\s*([a-z-]+)")
REPORT_RE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[tuple[int, str]], str]:
    """The (line, error code) pairs mypy reports for PROGRAM, and its whole output."""
    program = tmp_path_factory.mktemp("typing") / "uses_orchestra.py"
    program.write_text(PROGRAM, "utf-8")
    # mypy raises the interpreter's recursion limit for good; put it back, or a
    # later test of this process decodes JSON nested deeper than it can in production.
    recursion_limit = sys.getrecursionlimit()
    try:
        stdout, stderr, _ = api.run(
            [
                "--config-file",
                str(ROOT / "pyproject.toml"),
                # The project's cache: warm after `make typecheck`, so this takes a second.
                "--cache-dir",
                str(ROOT / ".mypy_cache"),
                "--show-error-codes",
                "--no-error-summary",
                "--no-pretty",
                str(program),
            ]
        )
    finally:
        sys.setrecursionlimit(recursion_limit)
    assert not stderr, stderr
    found = set()
    for line in stdout.splitlines():
        match = REPORT_RE.match(line)
        # Only the program's own lines: the package is checked by `make typecheck`.
        if match and Path(match["path"]).name == program.name:
            found.add((int(match["line"]), match["code"]))
    return found, stdout


def expected() -> set[tuple[int, str]]:
    """The (line, error code) pairs PROGRAM marks as expected."""
    return {
        (number, match[1])
        for number, text in enumerate(PROGRAM.splitlines(), start=1)
        if (match := EXPECTED_RE.search(text))
    }


def test_a_payload_of_the_wrong_type_is_reported_and_the_right_one_is_not(
    reported: tuple[set[tuple[int, str]], str],
) -> None:
    """defer, defer_async and defer_many of another type than the definition's are type errors.

    So is a job function that does not take ``payload_type``; a definition
    without ``payload_type`` takes any payload; ``definition.config`` and
    ``handle.config`` have the management API, typed.
    """
    found, output = reported
    assert found == expected(), output


def test_the_program_marks_both_kinds_of_line() -> None:
    """Control: the program has lines expected to fail and lines expected to pass."""
    marked = {line for line, _ in expected()}
    assert len(marked) >= 5
    assert any("defer(Report" in text for text in PROGRAM.splitlines())
