"""The fault battery's checks on hand-made snapshots: each catches what it names, and only that."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import pytest

from tests.faults import _invariants as inv
from tests.faults._report import CaseResult, Scale, format_table

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(ms: int) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=ms)


def job(
    job_id: int,
    status: str = "succeeded",
    *,
    attempt: int = 1,
    max_attempts: int = 1,
    definition: str = "d",
    tick_ms: int | None = None,
    key: str | None = None,
) -> inv.JobRow:
    return inv.JobRow(
        id=job_id,
        definition=definition,
        status=status,
        attempt=attempt,
        max_attempts=max_attempts,
        tick_at=None if tick_ms is None else at(tick_ms),
        resource_key=key,
        started_at=at(0),
        finalized_at=at(1_000) if status in inv.FINAL else None,
        result={"attempt": attempt} if status == "succeeded" else None,
        finished=status in inv.FINAL,
    )


def attempt(
    job_id: int,
    n: int = 1,
    outcome: str = "succeeded",
    start_ms: int = 0,
    worker_id: int | None = 1,
) -> inv.AttemptRow:
    return inv.AttemptRow(job_id, n, outcome, at(start_ms), at(start_ms + 10), worker_id)


def run(
    job_id: int,
    n: int = 1,
    start_ms: int = 0,
    end_ms: int | None = 10,
    outcome: str | None = "succeeded",
    definition: str = "d",
) -> inv.Execution:
    return inv.Execution(
        job_id, definition, n, 1, at(start_ms), None if end_ms is None else at(end_ms), outcome
    )


def snap(
    jobs: Sequence[inv.JobRow],
    attempts: Sequence[inv.AttemptRow] = (),
    runs: Sequence[inv.Execution] = (),
    in_both_tables: Sequence[int] = (),
) -> inv.Snapshot:
    return inv.Snapshot(
        {j.id: j for j in jobs}, tuple(attempts), tuple(runs), at(10_000), tuple(in_both_tables)
    )


def test_a_job_that_failed_without_running_all_its_attempts_is_lost() -> None:
    s = snap(
        [
            job(1, "failed"),  # never ran
            job(2, "failed"),  # ran its one attempt, failed: allowed
            job(3, "failed", attempt=3, max_attempts=3),  # ran two of three
            job(4, "running"),
            job(5, "cancelled"),
        ],
        runs=[run(2, outcome="failed"), run(3, 1), run(3, 2)],
    )
    lost = inv.lost_jobs(s, [1, 2, 3, 4, 5, 6])
    assert [line.split()[1] for line in lost] == ["1", "3", "4", "5", "6"]
    assert "vanished" in lost[-1]


def test_two_succeeded_attempts_or_a_claim_after_success_are_duplicate_successes() -> None:
    s = snap(
        [job(1, attempt=2), job(2, attempt=2), job(3, attempt=2)],
        attempts=[
            attempt(1, 1),
            attempt(1, 2),
            attempt(2, 2),
            attempt(3, 1, "lost"),
            attempt(3, 2),
        ],
        # Job 2's attempt 1 started late (its worker froze after the claim): an
        # extra run, not a duplicate success. Job 3 ran attempt 3 after succeeding.
        runs=[run(2, 1, start_ms=5_000), run(2, 2), run(3, 2), run(3, 3, start_ms=2_000)],
    )
    duplicates = inv.duplicate_successes(s)
    assert len(duplicates) == 2
    assert duplicates[0].startswith("job 1 ") and duplicates[1].startswith("job 3 ")
    assert inv.counts(s, [1, 2, 3]).duplicate_successes == 2


def test_success_records_want_one_succeeded_row_matching_the_result() -> None:
    s = snap(
        [job(1), job(2, "failed"), job(3, attempt=2), job(4), job(5)],
        attempts=[attempt(2, 1), attempt(3, 1), attempt(4, worker_id=None), attempt(5)],
    )
    found = inv.success_records(s)
    assert [line.split()[1] for line in found] == ["1", "2", "3", "4"]
    assert "without the worker that ran it" in found[-1]


def test_a_job_in_both_the_hot_table_and_the_history_is_a_violation() -> None:
    s = snap([job(1), job(2, "running")], attempts=[attempt(1)], in_both_tables=[2])
    assert inv.rows_in_both_tables(s) == ["job 2 (d) is in both job and job_history"]
    assert inv.rows_in_both_tables(snap([job(1)], attempts=[attempt(1)])) == []


def test_doubled_runs_count_extra_executions_but_not_purposeful_failures() -> None:
    s = snap(
        [job(1, attempt=3, max_attempts=3), job(2, attempt=2, max_attempts=3)],
        runs=[
            run(1, 1, outcome="failed"),
            run(1, 2, end_ms=None, outcome=None),  # killed mid-run
            run(1, 3),
            run(2, 1),  # succeeded, finish lost
            run(2, 2),
        ],
    )
    assert inv.doubled_runs(s) == 2


def test_two_executions_of_one_attempt_at_once_are_overlapping_claims() -> None:
    s = snap(
        [job(1), job(2)],
        runs=[run(1, 1, 0, 100), run(1, 1, 50, 150), run(2, 1, 0, 100), run(2, 1, 100, 200)],
    )
    assert inv.overlapping_claims(s) == ["job 1 attempt 1 ran twice at once (pids 1 and 1)"]


def test_concurrency_and_resource_keys_are_checked_from_ledger_intervals() -> None:
    jobs = [job(i, key="k" if i < 3 else None) for i in range(1, 5)]
    runs = [run(1, 1, 0, 100), run(2, 1, 100, 200), run(3, 1, 0, 100), run(4, 1, 50, 60)]
    s = snap(jobs, runs=runs)
    assert inv.resource_keys_shared(s) == []  # end and start at one instant: not at once
    assert inv.concurrency_exceeded(s, "d", 3) == []
    assert len(inv.concurrency_exceeded(s, "d", 2)) == 1
    s = snap(jobs, runs=[*runs, run(2, 2, 50, 70)])
    assert len(inv.resource_keys_shared(s)) == 1


def test_ticks_twice_or_closer_than_the_interval_are_doubled_ticks() -> None:
    s = snap(
        [job(1, tick_ms=0), job(2, tick_ms=1_000), job(3, tick_ms=1_000), job(4, tick_ms=1_500)]
    )
    found = inv.doubled_ticks(s, "d", dt.timedelta(seconds=1))
    assert len(found) == 2
    assert "enqueued 2 times" in found[0]
    assert inv.tick_count(s, "d") == 4


def test_starts_closer_than_the_release_interval_break_the_rate_limit() -> None:
    s = snap(
        [job(1, attempt=2, max_attempts=2), job(2)],
        attempts=[
            attempt(1, 1, "lost", 0),
            attempt(1, 2, start_ms=100),
            attempt(2, 1, start_ms=150),
        ],
    )
    assert inv.rate_limit_broken(s, "d", dt.timedelta(milliseconds=100)) != []
    assert inv.rate_limit_broken(s, "d", dt.timedelta(milliseconds=50)) == []


def test_success_events_are_counted_from_json_log_lines() -> None:
    def line(job_id: int) -> str:
        return json.dumps({"event": "WorkerJobSucceeded", "job_id": job_id})

    s = snap([job(1), job(2), job(3, "failed")])
    logs = [
        f"{line(1)}\n{line(1)}\nnot json WorkerJobSucceeded\n",
        f'{line(3)}\n{{"event": "Worker',
    ]
    found = inv.success_events(s, logs, complete=True)
    assert found == [
        "job 1 has 2 WorkerJobSucceeded events",
        "job 3 has a WorkerJobSucceeded event but is failed",
        "job 2 (d) succeeded without a WorkerJobSucceeded event",
    ]
    assert len(inv.success_events(s, logs, complete=False)) == 2


def test_the_report_table_has_a_header_and_one_aligned_line_per_case() -> None:
    rows = [
        ("passed", CaseResult("b-case[short]", 10, 1, 0, 2, 0, 1.25)),
        ("failed", CaseResult("a[short]", 3000, 12, 1, 0, 0, 30.0, note="x=1")),
    ]
    table = format_table(rows)
    assert table[0].split() == [
        "case", "jobs", "faults", "lost", "doubled", "duplicate_successes", "seconds",
        "outcome", "note",
    ]  # fmt: skip
    assert table[1].split() == ["a[short]", "3000", "12", "1", "0", "0", "30.0", "failed", "x=1"]
    assert table[2].split()[0] == "b-case[short]"
    assert table[1].index("3000") == table[2].index("10") == table[0].index("jobs")
    assert rows[1][1].line() == (
        "a[short]: jobs=3000 faults=12 lost=1 doubled=0 duplicate_successes=0 time=30.0s x=1"
    )


def test_the_scale_is_short_unless_the_environment_asks_for_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ORCHESTRA_FAULTS", raising=False)
    assert Scale.from_env().pick(1, 2) == 1
    monkeypatch.setenv("ORCHESTRA_FAULTS", "full")
    assert Scale.from_env().pick(1, 2) == 2
    assert Scale.from_env().name == "full"
