"""Checks of the fault battery over the queue's tables, the ledger and the daemons' events.

A case waits until its jobs are finished (or a deadline passes), takes a
:class:`Snapshot` of the schema with :func:`snapshot`, and runs the checks it
cares about. Each check returns a list of violations, one readable line each:
an empty list is a pass. :func:`counts` gives the numbers of the report line.

The snapshot reads every job through the ``all_jobs`` view (unfinished jobs
in ``job``, finished ones in ``job_history``), every ended attempt through
``all_job_attempts`` (the log rows of unfinished jobs, the JSON log of finished
ones, and the success a succeeded job's history row records), and
``fault_ledger`` (:mod:`tests.faults._ledger`): what the database says
happened next to what really ran. A job found in both tables at once is a
violation of its own (:func:`rows_in_both_tables`).

Vocabulary:

* **lost**: a committed job that never succeeded although it should have: it
  is gone, still unfinished, cancelled, or failed without having actually run
  ``max_attempts`` times (with ``num_attempts=1``, failed without running).
* **doubled**: an extra run of a job (the ledger has more executions than the
  one success plus the attempts that failed on purpose). Allowed: delivery is
  at least once.
* **duplicate success**: a job whose success was recorded twice. Never allowed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, LiteralString

import attrs
import psycopg
from psycopg import sql

FINAL = frozenset({"succeeded", "failed", "cancelled"})


@attrs.frozen
class JobRow:
    """One job, from ``job`` or ``job_history``."""

    id: int
    definition: str
    status: str
    attempt: int
    max_attempts: int
    tick_at: dt.datetime | None
    resource_key: str | None
    started_at: dt.datetime | None
    finalized_at: dt.datetime | None
    result: Any
    #: In ``job_history`` (finished), not in ``job``.
    finished: bool


@attrs.frozen
class AttemptRow:
    """One ended attempt: a log row of an unfinished job, or one of a finished job's history."""

    job_id: int
    attempt: int
    outcome: str
    started_at: dt.datetime
    finished_at: dt.datetime
    #: The worker that ran it (NULL when none did: a rescue, a timeout).
    worker_id: int | None


@attrs.frozen
class Execution:
    """One execution of a job function, from the ledger."""

    job_id: int
    definition: str
    attempt: int
    pid: int
    started: dt.datetime
    finished: dt.datetime | None
    outcome: str | None

    @property
    def end(self) -> dt.datetime:
        """When it stopped running; its start when the process died meanwhile.

        A killed execution's end is unknown; taking its start keeps the
        interval checks from blaming the queue for what a kill left open.
        """
        return self.finished if self.finished is not None else self.started


@attrs.frozen
class Snapshot:
    """Everything the checks read, taken at one moment."""

    jobs: dict[int, JobRow]
    attempts: tuple[AttemptRow, ...]
    executions: tuple[Execution, ...]
    taken_at: dt.datetime
    #: Ids of jobs read twice: in ``job`` and in ``job_history`` at once.
    in_both_tables: tuple[int, ...] = ()

    def attempts_of(self) -> dict[int, list[AttemptRow]]:
        """Attempt-log rows by job id."""
        found: dict[int, list[AttemptRow]] = defaultdict(list)
        for row in self.attempts:
            found[row.job_id].append(row)
        return found

    def executions_of(self) -> dict[int, list[Execution]]:
        """Ledger executions by job id, in start order."""
        found: dict[int, list[Execution]] = defaultdict(list)
        for run in sorted(self.executions, key=lambda e: e.started):
            found[run.job_id].append(run)
        return found


# Unfinished rows first: a job read twice keeps its unfinished row, which the
# checks of unfinished jobs report too.
_JOBS: LiteralString = """
SELECT id, definition, status::text, attempt, max_attempts, tick_at, resource_key,
       started_at, finalized_at, result, finished FROM {s}.all_jobs
ORDER BY finished DESC
"""
_ATTEMPTS: LiteralString = """
SELECT job_id, attempt, outcome, started_at, finished_at, worker_id FROM {s}.all_job_attempts
"""
_EXECUTIONS: LiteralString = """
SELECT job_id, definition, attempt, pid, started, finished, outcome FROM {s}.fault_ledger
"""


def snapshot(conn: psycopg.Connection[Any], schema: str) -> Snapshot:
    """Read the jobs, attempts and ledger of ``schema`` in one repeatable-read snapshot.

    ``conn`` is an autocommit connection (the ``db`` fixture).
    """

    def rows(query: LiteralString) -> list[tuple[Any, ...]]:
        return conn.execute(sql.SQL(query).format(s=sql.Identifier(schema))).fetchall()

    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        job_rows = [JobRow(*r) for r in rows(_JOBS)]
        attempts = tuple(AttemptRow(*r) for r in rows(_ATTEMPTS))
        executions = tuple(Execution(*r) for r in rows(_EXECUTIONS))
        now = rows("SELECT clock_timestamp()")[0][0]
    jobs = {job.id: job for job in job_rows}
    twice = Counter(job.id for job in job_rows)
    return Snapshot(
        jobs=jobs,
        attempts=attempts,
        executions=executions,
        taken_at=now,
        in_both_tables=tuple(sorted(job_id for job_id, n in twice.items() if n > 1)),
    )


# -- the checks ---------------------------------------------------------------


def lost_jobs(snap: Snapshot, job_ids: Iterable[int]) -> list[str]:
    """Committed jobs that did not end as they should (see the module's "lost")."""
    executions = snap.executions_of()
    violations = []
    for job_id in sorted(job_ids):
        job = snap.jobs.get(job_id)
        if job is None:
            violations.append(f"job {job_id} vanished (in neither job nor job_history)")
        elif job.status == "succeeded":
            continue
        elif job.status not in FINAL:
            violations.append(f"job {job_id} ({job.definition}) never finished: {job.status}")
        elif job.status == "cancelled":
            violations.append(f"job {job_id} ({job.definition}) was cancelled")
        else:
            ran = {run.attempt for run in executions.get(job_id, [])}
            if len(ran) < job.max_attempts:
                violations.append(
                    f"job {job_id} ({job.definition}) failed after running"
                    f" {len(ran)} of its {job.max_attempts} attempt(s) (attempts run: "
                    f"{sorted(ran)}, job.attempt={job.attempt})"
                )
    return violations


def _duplicated(snap: Snapshot) -> dict[int, list[str]]:
    """The violations of :func:`duplicate_successes`, by job id."""
    attempts = snap.attempts_of()
    executions = snap.executions_of()
    found: dict[int, list[str]] = defaultdict(list)
    for job_id, job in sorted(snap.jobs.items()):
        succeeded = [a.attempt for a in attempts.get(job_id, []) if a.outcome == "succeeded"]
        if len(succeeded) > 1:
            found[job_id].append(
                f"job {job_id} ({job.definition}) has {len(succeeded)} succeeded attempt rows"
                f" (attempts {succeeded})"
            )
        if job.status == "succeeded":
            # A claim made after the success would carry a later attempt number. A
            # late execution of an earlier attempt (its worker froze between claim
            # and start) is only an extra run: its finish is fenced.
            late = [run for run in executions.get(job_id, []) if run.attempt > job.attempt]
            if late:
                found[job_id].append(
                    f"job {job_id} ({job.definition}) was claimed again after its success"
                    f" at attempt {job.attempt} (ran attempts {[run.attempt for run in late]})"
                )
    return found


def duplicate_successes(snap: Snapshot) -> list[str]:
    """Jobs whose success was recorded twice, or that were claimed again once it was."""
    return [line for lines in _duplicated(snap).values() for line in lines]


def success_records(snap: Snapshot) -> list[str]:
    """A succeeded job has one ``succeeded`` attempt, run by a worker, the one its result names.

    (The ledger functions return their attempt.) A job that did not succeed
    has no such attempt. A succeeded job's history row is the record of its
    successful attempt: that attempt's worker is in the row, as only a
    worker's finish makes a success.
    """
    attempts = snap.attempts_of()
    violations = []
    for job_id, job in sorted(snap.jobs.items()):
        successes = [a for a in attempts.get(job_id, []) if a.outcome == "succeeded"]
        succeeded = [a.attempt for a in successes]
        if job.status != "succeeded":
            if succeeded:
                violations.append(
                    f"job {job_id} ({job.definition}) is {job.status} with a succeeded attempt"
                )
            continue
        if not succeeded:
            violations.append(f"job {job_id} ({job.definition}) succeeded without an attempt row")
            continue
        if any(a.worker_id is None for a in successes):
            violations.append(
                f"job {job_id} ({job.definition}) succeeded without the worker that ran it"
            )
        result = json.loads(job.result) if isinstance(job.result, str) else job.result
        if isinstance(result, dict) and result.get("attempt", succeeded[-1]) != succeeded[-1]:
            violations.append(
                f"job {job_id} ({job.definition}): result of attempt {result['attempt']},"
                f" success recorded for attempt {succeeded[-1]}"
            )
    return violations


def rows_in_both_tables(snap: Snapshot) -> list[str]:
    """Jobs both unfinished (in ``job``) and finished (in ``job_history``) at one snapshot.

    A job's end moves its row in one statement: never both, never neither.
    """
    return [
        f"job {job_id} ({snap.jobs[job_id].definition}) is in both job and job_history"
        for job_id in snap.in_both_tables
    ]


def doubled_runs(snap: Snapshot) -> int:
    """Extra executions: all of them, less one per job and less the purposeful failures."""
    extra = 0
    for job_id, runs in snap.executions_of().items():
        if job_id not in snap.jobs:
            continue
        failed_on_purpose = sum(1 for run in runs if run.outcome == "failed")
        extra += max(0, len(runs) - 1 - failed_on_purpose)
    return extra


def overlapping_claims(snap: Snapshot) -> list[str]:
    """Two executions of the same (job, attempt) that ran at the same time.

    Each claim gives a new attempt number, so two live executions of one
    attempt mean one claim ran twice at once.
    """
    by_attempt: dict[tuple[int, int], list[Execution]] = defaultdict(list)
    for run in snap.executions:
        by_attempt[(run.job_id, run.attempt)].append(run)
    violations = []
    for (job_id, attempt), runs in sorted(by_attempt.items()):
        runs.sort(key=lambda r: r.started)
        for first, second in itertools.pairwise(runs):
            if second.started < first.end:
                violations.append(
                    f"job {job_id} attempt {attempt} ran twice at once"
                    f" (pids {first.pid} and {second.pid})"
                )
    return violations


def _peaks(runs: Iterable[Execution], limit: int, what: str) -> list[str]:
    """Moments when more than ``limit`` of ``runs`` ran at once (finished runs only)."""
    edges: list[tuple[dt.datetime, int]] = []
    for run in runs:
        if run.finished is not None:
            edges.append((run.started, 1))
            edges.append((run.finished, -1))
    edges.sort()  # at the same instant an end (-1) comes before a start (+1)
    running = peak = 0
    violations = []
    for at, step in edges:
        running += step
        if running > limit and running > peak:
            violations.append(f"{running} jobs of {what} ran at once at {at} (limit {limit})")
        peak = max(peak, running)
    return violations


def concurrency_exceeded(snap: Snapshot, definition: str, limit: int) -> list[str]:
    """Moments when more than ``limit`` executions of ``definition`` ran at once.

    From the ledger's intervals, which lie inside the claims' (the function
    starts after its claim and returns before its finish), so a cap held by
    the claims holds here too. Executions killed meanwhile are left out.
    """
    return _peaks((r for r in snap.executions if r.definition == definition), limit, definition)


def resource_keys_shared(snap: Snapshot) -> list[str]:
    """Moments when two jobs of the same resource key ran at once."""
    by_key: dict[str, list[Execution]] = defaultdict(list)
    for run in snap.executions:
        job = snap.jobs.get(run.job_id)
        if job is not None and job.resource_key is not None:
            by_key[job.resource_key].append(run)
    return [
        line
        for key, runs in sorted(by_key.items())
        for line in _peaks(runs, 1, f"resource key {key!r}")
    ]


def doubled_ticks(
    snap: Snapshot, definition: str, interval: dt.timedelta | None = None
) -> list[str]:
    """Ticks of ``definition`` enqueued more than once, or closer together than ``interval``."""
    ticks = sorted(
        job.tick_at
        for job in snap.jobs.values()
        if job.definition == definition and job.tick_at is not None
    )
    violations = [
        f"tick {tick} of {definition} enqueued {n} times"
        for tick, n in Counter(ticks).items()
        if n > 1
    ]
    if interval is not None:
        unique = sorted(set(ticks))
        violations += [
            f"ticks {a} and {b} of {definition} are closer than {interval}"
            for a, b in itertools.pairwise(unique)
            if b - a < interval
        ]
    return violations


def tick_count(snap: Snapshot, definition: str) -> int:
    """How many tick jobs of ``definition`` exist (unfinished or finished)."""
    return sum(1 for j in snap.jobs.values() if j.definition == definition and j.tick_at)


def rate_limit_broken(snap: Snapshot, definition: str, interval: dt.timedelta) -> list[str]:
    """Starts of ``definition`` closer together than ``interval``, from the database's clock.

    Starts are the attempt log's ``started_at`` (the claim's timestamp) and
    those of the attempts still running.
    """
    starts = [
        a.started_at
        for a in snap.attempts
        if a.job_id in snap.jobs and snap.jobs[a.job_id].definition == definition
    ]
    starts += [
        j.started_at
        for j in snap.jobs.values()
        if j.definition == definition and j.status == "running" and j.started_at is not None
    ]
    unique = sorted(set(starts))
    violations = [
        f"two starts of {definition} at the same instant {at}"
        for at, n in Counter(starts).items()
        if n > 1
    ]
    violations += [
        f"starts of {definition} at {a} and {b}: {(b - a).total_seconds() * 1000:.1f} ms apart,"
        f" limit {interval.total_seconds() * 1000:.0f} ms"
        for a, b in itertools.pairwise(unique)
        if b - a < interval
    ]
    return violations


def unfinished(snap: Snapshot, job_ids: Iterable[int] | None = None) -> list[str]:
    """Jobs still running, available or waiting (all of them, or those of ``job_ids``)."""
    wanted = snap.jobs.keys() if job_ids is None else set(job_ids)
    return [
        f"job {job_id} ({snap.jobs[job_id].definition}) is still {snap.jobs[job_id].status}"
        for job_id in sorted(wanted)
        if job_id in snap.jobs and snap.jobs[job_id].status not in FINAL
    ]


# -- the daemons' events ------------------------------------------------------


def events(logs: Iterable[str], name: str) -> list[dict[str, Any]]:
    """The ``name`` events in daemon logs written with ``--log-format json``.

    Lines that are not JSON (a process killed mid-line, a traceback) are skipped.
    """
    found = []
    for log in logs:
        for line in log.splitlines():
            if not line.startswith("{") or name not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
    return found


def success_events(snap: Snapshot, logs: Iterable[str], *, complete: bool) -> list[str]:
    """``WorkerJobSucceeded`` events against succeeded jobs.

    Never two events for one job. With ``complete`` (no daemon was killed, so
    none died between a commit and its event), every succeeded job has one.
    """
    seen = Counter(int(record["job_id"]) for record in events(logs, "WorkerJobSucceeded"))
    violations = [
        f"job {job_id} has {n} WorkerJobSucceeded events" for job_id, n in seen.items() if n > 1
    ]
    violations += [
        f"job {job_id} has a WorkerJobSucceeded event but is {snap.jobs[job_id].status}"
        for job_id in sorted(seen)
        if job_id in snap.jobs and snap.jobs[job_id].status != "succeeded"
    ]
    if complete:
        violations += [
            f"job {job_id} ({job.definition}) succeeded without a WorkerJobSucceeded event"
            for job_id, job in sorted(snap.jobs.items())
            if job.status == "succeeded" and job_id not in seen
        ]
    return violations


# -- the report line ----------------------------------------------------------


@attrs.frozen
class Counts:
    """The numbers of a report line."""

    jobs: int
    lost: int
    doubled: int
    duplicate_successes: int


def counts(snap: Snapshot, job_ids: Sequence[int]) -> Counts:
    """Jobs, lost jobs, extra runs and jobs with a duplicate success, over ``job_ids``."""
    return Counts(
        jobs=len(job_ids),
        lost=len(lost_jobs(snap, job_ids)),
        doubled=doubled_runs(snap),
        duplicate_successes=len(_duplicated(snap)),
    )
