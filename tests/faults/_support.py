"""Helpers of the process-level fault cases: daemons on the ledger app, waits, the verdict.

A case typically::

    worker = start_worker(daemons, name="w1")
    orchestrator = start_orchestrator(daemons)
    ids = [h.id for h in fault_jobs["retried"].defer_many([{"sleep_ms": 20}] * n)]
    ... inject faults, pacing them on progress (:func:`finished_count`), never on sleeps ...
    settle(db, ledger, ids, timeout=...)
    snap = snapshot(db, ledger)
    conclude(report, snap, case="...", job_ids=ids, faults=k,
             violations={**basic_checks(snap, ids), "...": other_check(snap)})

:func:`conclude` records the report line first, then fails with every
violation found, so a failing case still shows its counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from orchestra.testing import wait_until
from tests.e2e._support import Daemon, DaemonFactory
from tests.faults._invariants import (
    Snapshot,
    counts,
    duplicate_successes,
    lost_jobs,
    overlapping_claims,
    rows_in_both_tables,
    success_records,
    unfinished,
)
from tests.faults._ledger import CHANNEL, daemon_application_name
from tests.faults._report import CaseResult, Report

APP = "tests.faults._ledger_app:config"
#: The app with the repeating ``tick`` definition too.
APP_WITH_TICKS = "tests.faults._ledger_app:with_ticks"
#: How many violations of one kind a failure message lists.
SHOWN = 20


def start_worker(
    daemons: DaemonFactory,
    *,
    name: str,
    concurrency: int = 4,
    ticks: bool = False,
    extra: Sequence[str] = (),
    wait_started: bool = True,
) -> Daemon:
    """A worker of the ledger app on :data:`CHANNEL`, logging JSON events.

    With ``ticks`` it carries the repeating ``tick`` definition, so it runs tick jobs.
    """
    return daemons.start(
        app=APP_WITH_TICKS if ticks else APP,
        name=name,
        concurrency=concurrency,
        extra=["--channel", CHANNEL, "--log-format", "json", *extra],
        wait_started=wait_started,
    )


def start_orchestrator(
    daemons: DaemonFactory,
    *,
    name: str = "orch",
    lease_ms: int = 1_000,
    ticks: bool = False,
    extra: Sequence[str] = (),
    wait_started: bool = True,
) -> Daemon:
    """An orchestrator of the ledger app: quick rescues, JSON events, finished jobs kept.

    With ``--archive`` (and no retention) the sweeper never drops a finished
    job from the history, so the checks find every job of the case.

    With ``ticks`` it carries the repeating ``tick`` definition and enqueues its ticks.
    """
    return daemons.start(
        app=APP_WITH_TICKS if ticks else APP,
        role="orchestrator",
        name=name,
        extra=[
            "--log-format", "json",
            "--leader-lease-ms", str(lease_ms),
            "--rescue-interval-ms", "200",
            "--finalize-interval-ms", "500",
            "--repeat-interval-ms", "200",
            "--archive",
            *extra,
        ],
        wait_started=wait_started,
    )  # fmt: skip


def logs(daemons: DaemonFactory) -> list[str]:
    """Every daemon's whole log so far."""
    return [daemon.log() for daemon in daemons.daemons]


def _compose(schema: str, query: sql.SQL) -> sql.Composed:
    return query.format(s=sql.Identifier(schema))


def finished_count(conn: psycopg.Connection[Any], schema: str, job_ids: Sequence[int]) -> int:
    """How many of ``job_ids`` are finished (moved into ``job_history``)."""
    row = conn.execute(
        _compose(
            schema,
            sql.SQL("SELECT count(*) FROM {s}.all_jobs WHERE id = ANY(%(ids)s) AND finished"),
        ),
        {"ids": list(job_ids)},
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_finished(
    conn: psycopg.Connection[Any],
    schema: str,
    job_ids: Sequence[int],
    at_least: int,
    *,
    timeout: float,
) -> None:
    """Wait until ``at_least`` of ``job_ids`` are finalized: faults are paced on progress."""
    wait_until(
        lambda: finished_count(conn, schema, job_ids) >= at_least,
        timeout=timeout,
        interval=0.05,
        message=f"fewer than {at_least} of {len(job_ids)} jobs ever finished",
    )


def eventually(condition: Callable[[], object], *, timeout: float) -> bool:
    """Whether ``condition`` turns true within ``timeout`` (polled; never raises on timeout).

    For waits whose failure is a finding to report with the case's counts,
    not a reason to stop the case.
    """
    try:
        wait_until(condition, timeout=timeout, interval=0.05)
    except TimeoutError:
        return False
    return True


def settle(
    conn: psycopg.Connection[Any], schema: str, job_ids: Sequence[int], *, timeout: float
) -> bool:
    """Wait until every job of ``job_ids`` is finalized; False if ``timeout`` passed first.

    Not an assertion: the checks that follow say which jobs and why.
    """
    return eventually(
        lambda: finished_count(conn, schema, job_ids) >= len(job_ids), timeout=timeout
    )


def daemon_backends(conn: psycopg.Connection[Any], schema: str) -> list[tuple[int, str]]:
    """(pid, query) of the server processes serving this case's daemons."""
    return [
        (int(pid), str(query))
        for pid, query in conn.execute(
            "SELECT pid, query FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (daemon_application_name(schema),),
        ).fetchall()
    ]


def terminate(conn: psycopg.Connection[Any], pids: Sequence[int]) -> int:
    """Terminate these server processes; return how many were still there to terminate."""
    if not pids:
        return 0
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
        " FROM unnest(%s::integer[]) AS t(pid)",
        (list(pids),),
    ).fetchone()
    assert row is not None
    return int(row[0])


def basic_checks(snap: Snapshot, job_ids: Sequence[int]) -> dict[str, list[str]]:
    """The checks every case runs: none lost or left unfinished, none succeeded twice, etc.

    Also: every success recorded consistently, one live execution per attempt,
    no job in both the hot table and the history.
    """
    return {
        "lost": lost_jobs(snap, job_ids),
        "in both tables": rows_in_both_tables(snap),
        "left unfinished": unfinished(snap, set(snap.jobs) - set(job_ids)),
        "duplicate successes": duplicate_successes(snap),
        "success records": success_records(snap),
        "overlapping claims": overlapping_claims(snap),
    }


def conclude(
    report: Report,
    snap: Snapshot,
    *,
    case: str,
    job_ids: Sequence[int],
    faults: int,
    violations: dict[str, list[str]],
    note: str = "",
) -> None:
    """Record the case's report line, then fail listing every violation, if any."""
    numbers = counts(snap, job_ids)
    report.record(
        CaseResult(
            case=case,
            jobs=numbers.jobs,
            faults=faults,
            lost=numbers.lost,
            doubled=numbers.doubled,
            duplicate_successes=numbers.duplicate_successes,
            seconds=report.elapsed(),
            note=note,
        )
    )
    found = {kind: lines for kind, lines in violations.items() if lines}
    if found:
        message = [f"{case}: invariants violated"]
        for kind, lines in found.items():
            message.append(f"{kind} ({len(lines)}):")
            message += [f"  {line}" for line in lines[:SHOWN]]
            if len(lines) > SHOWN:
                message.append(f"  ... and {len(lines) - SHOWN} more")
        raise AssertionError("\n".join(message))
