"""Helpers of the hostile cases: real worker processes on a test schema, and checks of what they left.

The worker daemons run :mod:`tests.faults._hostile_app`. A case defers (or
inserts by SQL, as a producer could) hostile and well-behaved jobs in one
channel, starts a worker, waits until every job is finalized (or the worker
died), then checks each job's row, its attempt log and the fault ledger of
its executions (next to the battery's own invariants,
:mod:`tests.faults._invariants`), and that the worker stops cleanly on SIGTERM.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from psycopg import sql

from orchestra.testing import wait_until
from tests.e2e._support import Daemon, DaemonFactory, Queue
from tests.faults import _invariants
from tests.faults._report import CaseResult, Report

APP = "tests.faults._hostile_app:config"
#: A worker's shutdown grace in these cases: long enough that a clean stop never needs it.
SHUTDOWN_GRACE_MS = 20_000
#: How long a stopping worker may take beyond its grace (flush, children, interpreter exit).
STOP_SLACK_S = 60.0
#: Attempt errors are stored bounded (4,000 characters and a cut marker): anything
#: far longer was not bounded.
ERROR_READABLE_MAX_CHARS = 5_000
#: A wait for jobs gives up when none of them moved (status or attempt) for this long.
STALLED_S = 30.0


def start_worker(
    daemons: DaemonFactory, mode: str, channel: str, *, concurrency: int = 8, children: int = 2
) -> Daemon:
    """A worker of the hostile app serving ``channel``; child processes in mode ``child``."""
    extra = ["--channel", channel]
    if mode == "child":
        extra += ["--processes", str(children)]
        concurrency = children  # one job per child
    return daemons.start(
        app=APP,
        name=f"hostile-{mode}",
        concurrency=concurrency,
        extra=extra,
        shutdown_grace_ms=SHUTDOWN_GRACE_MS,
    )


def insert_raw(
    queue: Queue,
    definition: str,
    channel: str,
    payload_json: str,
    *,
    max_attempts: int,
    priority: int = 0,
) -> int:
    """Insert a job as a producer with INSERT on the job table could, payload unchecked.

    The columns a ``defer`` writes: definition, channel, priority, payload,
    max_attempts, and ``limited`` (false: no rate limit, no resource key);
    the rest take their defaults (available, due now).
    """
    row = queue.conn.execute(
        sql.SQL(
            "INSERT INTO {s}.job (definition, channel, priority, payload, max_attempts, limited)"
            " VALUES (%s, %s, %s, %s::jsonb, %s, false) RETURNING id"
        ).format(s=sql.Identifier(queue.schema)),
        (definition, channel, priority, payload_json, max_attempts),
    ).fetchone()
    assert row is not None
    return int(row[0])


@attrs.frozen
class JobState:
    """What the database holds about one job at the end of a case."""

    id: int
    definition: str
    status: str
    attempt: int
    max_attempts: int
    last_error: str | None
    result: Any
    #: (attempt, outcome, error) per ended attempt, in order (a success included:
    #: the history row of a succeeded job records it).
    attempts: tuple[tuple[int, str, str | None], ...]
    #: Executions recorded by the job function itself in the fault ledger.
    executions: int


def states(queue: Queue, ids: Iterable[int]) -> dict[int, JobState]:
    """The state of each job in ``ids``, unfinished or finished."""
    wanted = sorted(set(ids))
    rows = queue.rows(
        "SELECT id, definition, status::text, attempt, max_attempts, last_error, result"
        " FROM {s}.all_jobs WHERE id = ANY(%s)",
        (wanted,),
    )
    attempts: dict[int, list[tuple[int, str, str | None]]] = {}
    # A succeeded attempt has no log row (id NULL): the last one of its job.
    for job_id, attempt, outcome, error in queue.rows(
        "SELECT job_id, attempt, outcome, error FROM {s}.all_job_attempts"
        " WHERE job_id = ANY(%s) ORDER BY job_id, id NULLS LAST",
        (wanted,),
    ):
        attempts.setdefault(int(job_id), []).append((int(attempt), str(outcome), error))
    executions = {
        int(job_id): int(n)
        for job_id, n in queue.rows(
            "SELECT job_id, count(*) FROM {s}.fault_ledger WHERE job_id = ANY(%s) GROUP BY job_id",
            (wanted,),
        )
    }
    return {
        int(r[0]): JobState(
            id=int(r[0]),
            definition=str(r[1]),
            status=str(r[2]),
            attempt=int(r[3]),
            max_attempts=int(r[4]),
            last_error=r[5],
            result=r[6],
            attempts=tuple(attempts.get(int(r[0]), ())),
            executions=executions.get(int(r[0]), 0),
        )
        for r in rows
    }


def progress(queue: Queue, ids: Sequence[int]) -> tuple[int, int]:
    """How many of ``ids`` are not finished, and how many attempts they have made in all.

    A job found in neither table counts as not finished: nothing will finish it.
    """
    wanted = sorted(set(ids))
    row = queue.rows(
        "SELECT count(*) FILTER (WHERE finished), coalesce(sum(attempt), 0)"
        " FROM {s}.all_jobs WHERE id = ANY(%s)",
        (wanted,),
    )[0]
    return len(wanted) - int(row[0]), int(row[1])


def wait_finalized(queue: Queue, ids: Sequence[int], worker: Daemon, *, timeout: float) -> str:
    """Wait until every job of ``ids`` is finalized; '' then, else why not (never raises).

    Gives up early when the worker process exits (nothing would finish the
    rest), or when nothing moved for STALLED_S while jobs are unfinished: a
    job stuck running would otherwise cost the whole timeout.
    """
    why: list[str] = []
    last: list[Any] = [None, time.monotonic()]

    def settled() -> bool:
        left, attempts = progress(queue, ids)
        if left == 0:
            return True
        code = worker.proc.poll()
        if code is not None:
            why.append(f"the worker exited with code {code} while {left} job(s) were unfinished")
            return True
        now = time.monotonic()
        if last[0] != (left, attempts):
            last[:] = [(left, attempts), now]
        elif now - last[1] > STALLED_S:
            why.append(f"{left} job(s) unfinished, and nothing moved for {STALLED_S} s")
            return True
        return False

    try:
        wait_until(settled, timeout=timeout, interval=0.1)
    except TimeoutError:
        return f"{progress(queue, ids)[0]} job(s) still unfinished after waiting {timeout} s"
    return why[0] if why else ""


def stop_cleanly(worker: Daemon) -> list[str]:
    """SIGTERM the worker; problems seen (it was dead already, exit code, jobs handed back)."""
    code = worker.proc.poll()
    if code is not None:
        return [f"the worker process had already exited with code {code}"]
    worker.send(signal.SIGTERM)
    try:
        code = worker.wait(SHUTDOWN_GRACE_MS / 1000 + STOP_SLACK_S)
    except Exception:
        return ["the worker did not exit after SIGTERM"]
    problems = []
    if code != 0:
        problems.append(f"the worker exited with code {code} on SIGTERM, not 0")
    stopped = re.search(r"DaemonStopped .*handed_back=(\d+)", worker.log())
    if stopped is None:
        problems.append("the worker never logged DaemonStopped")
    elif stopped.group(1) != "0":
        problems.append(
            f"the stop had to interrupt {stopped.group(1)} job(s) that should have ended"
        )
    return problems


def error_problems(state: JobState, expected: str) -> list[str]:
    """Why the attempt errors of a failed job are not readable, if they are not.

    ``expected`` is a regular expression that every attempt's error must match
    (the exception's type, or what could not be stored).
    """
    problems = []
    for attempt, outcome, error in state.attempts:
        where = f"job {state.id} ({state.definition}) attempt {attempt}"
        if outcome != "failed":
            problems.append(f"{where}: outcome {outcome!r}, expected 'failed' ({error!r:.200})")
        if not error or not error.strip():
            problems.append(f"{where}: no error text")
            continue
        if not re.search(expected, error):
            problems.append(f"{where}: error {error!r:.300} does not match {expected!r}")
        if len(error) > ERROR_READABLE_MAX_CHARS:
            problems.append(f"{where}: error of {len(error)} characters is not bounded")
    return problems


def finalized_problems(state: JobState) -> list[str]:
    """Why a hostile job did not end failed after all its attempts, if it did not."""
    where = f"job {state.id} ({state.definition})"
    if state.status != "failed":
        return [
            f"{where}: status {state.status!r} after attempt {state.attempt} of "
            f"{state.max_attempts}, expected 'failed' (last error {state.last_error!r:.200})"
        ]
    problems = []
    if state.attempt != state.max_attempts or len(state.attempts) != state.max_attempts:
        problems.append(
            f"{where}: failed after attempt {state.attempt} with {len(state.attempts)} "
            f"attempt row(s), expected {state.max_attempts} of each"
        )
    return problems


def succeeded_once_problems(state: JobState) -> list[str]:
    """Why a well-behaved job did not succeed exactly once, if it did not."""
    where = f"job {state.id} ({state.definition})"
    problems = []
    if state.status != "succeeded":
        problems.append(
            f"{where}: status {state.status!r} after attempt {state.attempt}, expected "
            f"'succeeded' (last error {state.last_error!r:.200})"
        )
    outcomes = [outcome for _, outcome, _ in state.attempts]
    if outcomes != ["succeeded"] and state.status == "succeeded":
        problems.append(f"{where}: attempt log {outcomes}, expected one success")
    if state.executions > 1:
        problems.append(f"{where}: ran {state.executions} times")
    return problems


def fail_on(problems: list[str], worker_logs: str = "") -> None:
    """Fail the test listing every problem (a few hundred lines at most)."""
    if not problems:
        return
    shown = problems[:200]
    more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise AssertionError(f"{len(problems)} problem(s):\n" + "\n".join(shown) + more + worker_logs)


def battery_checks(queue: Queue, ran: Sequence[int]) -> tuple[_invariants.Snapshot, list[str]]:
    """The battery's invariants over the case's schema; ``ran``: the jobs whose function
    must have run for each attempt (not those whose payload could not be read)."""
    snap = _invariants.snapshot(queue.conn, queue.schema)
    return snap, [
        *_invariants.lost_jobs(snap, ran),
        *_invariants.rows_in_both_tables(snap),
        *_invariants.unfinished(snap),
        *_invariants.duplicate_successes(snap),
        *_invariants.success_records(snap),
        *_invariants.overlapping_claims(snap),
    ]


def record(
    report: Report,
    snap: _invariants.Snapshot,
    *,
    case: str,
    job_ids: Sequence[int],
    ran: Sequence[int],
    faults: int,
    note: str = "",
) -> None:
    """Record the case's report line: lost and doubled over ``ran``, all jobs counted."""
    numbers = _invariants.counts(snap, ran)
    never_finished = len(_invariants.unfinished(snap, set(job_ids) - set(ran)))
    report.record(
        CaseResult(
            case=case,
            jobs=len(job_ids),
            faults=faults,
            lost=numbers.lost + never_finished,
            doubled=numbers.doubled,
            duplicate_successes=numbers.duplicate_successes,
            seconds=report.elapsed(),
            note=note,
        )
    )
