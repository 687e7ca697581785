"""The lane transaction's commit settings and slot hand-over, on a real PostgreSQL (decision 0015)."""

from __future__ import annotations

from typing import Any

import psycopg

from orchestra import Config, JobDefinition
from orchestra._worker import _attempts, _lanes
from orchestra._worker._attempts import Claimed, Finish
from tests._worker_sql import claim


def setting(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
    assert row is not None
    return str(row[0])


def run_lane(
    conn: psycopg.Connection[Any], config: Config, batch: list[Finish], limit: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], str]:
    """The lane's statements in one transaction; the finish and claim rows, and the
    synchronous_commit in force at the commit."""
    cursors: dict[str, psycopg.Cursor[Any]] = {}
    with conn.transaction():
        for name, params in _lanes.lane_statements(
            batch,
            limit,
            channels=["_default"],
            worker_id=1,
            worker_name="t",
            notify_channel=config.notify_channel,
            finished_channel=config.finished_channel,
            claim_id=_lanes.new_claim_id(),
        ):
            cursors[name] = conn.execute(config.queries[name], params)
        in_force = setting(conn)
    return cursors["job_finish_many"].fetchall(), cursors["job_claim"].fetchall(), in_force


def succeeded(row: tuple[Any, ...]) -> Finish:
    """The success of a claimed row's attempt, as a job thread would report it."""
    return _attempts.finish(Claimed(*row), "succeeded", result="1")


class TestLaneTransaction:
    def test_a_claim_alone_commits_as_durably_as_the_server_is_configured(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A claim a crash could forget would let a second worker run the job beside the first."""
        JobDefinition(config, name="j", job_function=lambda: None).defer({})
        default = setting(db)
        with db.transaction():
            assert len(claim(db, config)) == 1
            assert setting(db) == default

    def test_finishes_and_claim_commit_durably_and_hand_over_the_slots(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Two jobs finish and two others are claimed in one durable transaction."""
        definition = JobDefinition(config, name="j", job_function=lambda: None)
        definition.defer_many([{} for _ in range(4)])
        default = setting(db)
        first = claim(db, config, limit=2)
        finished, claimed, in_force = run_lane(db, config, [succeeded(r) for r in first], 2)
        assert in_force == default
        assert sorted(row[1] for row in finished) == ["succeeded", "succeeded"]
        assert len(claimed) == 2
        rows = db.execute(
            f'SELECT status::text, count(*) FROM "{config.schema}".all_jobs GROUP BY 1 ORDER BY 1'
        ).fetchall()
        assert rows == [("running", 2), ("succeeded", 2)]
        attempts = db.execute(f'SELECT count(*) FROM "{config.schema}".all_job_attempts').fetchone()
        assert attempts == (2,)
