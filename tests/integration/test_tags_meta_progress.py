"""Tags, metadata and progress against a real PostgreSQL: stored at defer, listed by tag,
read by the job, reported while it runs (rate-limited, fenced), kept by the history."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestra import Config, ConfigurationError, JobContext, JobDefinition, Worker, events
from orchestra._worker._inline import Runner
from orchestra.testing import EventRecorder, drain, drain_async, wait_until
from tests import _progress_jobs
from tests._finished_jobs import move_to_history
from tests._running import running


def _row(db: psycopg.Connection[Any], config: Config, job_id: int) -> tuple[Any, ...]:
    """(finished, status, tags, meta, progress) of a job, wherever it is."""
    row = db.execute(
        f'SELECT finished, status::text, tags, meta, progress FROM "{config.schema}".all_jobs '
        "WHERE id = %s",
        [job_id],
    ).fetchone()
    assert row is not None
    return tuple(row)


def _define(config: Config, name: str, function: Any, **kwargs: Any) -> JobDefinition[Any]:
    kwargs.setdefault("lock_interval_ms", 5_000)
    return JobDefinition(config, name=name, job_function=function, **kwargs)


class TestDeferAndList:
    def test_tags_and_meta_are_stored_and_jobs_are_listed_by_tag(self, config: Config) -> None:
        """defer, defer_async and defer_many store them; list and count filter by one tag."""
        send = _define(config, "send", lambda: None)
        invoice = send.defer({"n": 1}, tags=["billing", "eu"], meta={"tenant": 42})
        plain = send.defer({"n": 2})
        batch = send.defer_many([{"n": 3}, {"n": 4}], tags=("billing",), meta={"batch": True})
        later = asyncio.run(send.defer_async({"n": 5}, tags=["eu"], meta={"tenant": 7}))

        jobs = config.jobs
        assert [j.id for j in jobs.list(tag="billing")] == [invoice.id, *(h.id for h in batch)]
        assert [j.id for j in jobs.list(tag="eu", order="desc")] == [later.id, invoice.id]
        assert jobs.count(tag="billing") == 3
        assert jobs.count(tag="nobody") == 0
        assert jobs.list(tag="nobody") == []
        stored = jobs.get(invoice)
        assert (stored.tags, stored.meta, stored.progress) == (
            ("billing", "eu"),
            {"tenant": 42},
            None,
        )
        untagged = jobs.get(plain)
        assert (untagged.tags, untagged.meta) == ((), {})
        assert jobs.get(batch[1]).meta == {"batch": True}

    def test_the_tag_filter_finds_finished_jobs_too(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job in the history is listed and counted by its tag like an unfinished one."""
        send = _define(config, "send", lambda: None)
        done = send.defer(None, tags=["nightly"])
        waiting = send.defer(None, tags=["nightly"])
        send.defer(None, tags=["hourly"])
        move_to_history(db, config.schema, done.id, "succeeded")

        found = config.jobs.list(tag="nightly")
        assert [(j.id, j.status, j.tags) for j in found] == [
            (done.id, "succeeded", ("nightly",)),
            (waiting.id, "available", ("nightly",)),
        ]
        assert config.jobs.count(tag="nightly", status="succeeded") == 1

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"tags": "billing"}, "tags: must be a list of strings, not str"),
            ({"tags": ["a\nb"]}, "tags: must not contain control"),
            ({"tags": ["x" * 101]}, "tags: each tag must be at most 100 characters"),
            ({"meta": {"tenant": float("inf")}}, "meta: the value is not JSON-serializable"),
            ({"meta": "tenant=42"}, "meta: must be a dict (a JSON object), not str"),
        ],
    )
    def test_bad_tags_or_meta_write_nothing(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        arguments: dict[str, Any],
        message: str,
    ) -> None:
        """One ConfigurationError line naming the argument; no job, not even the definition row."""
        send = _define(config, "send", lambda: None)
        attempts: list[Callable[[], object]] = [
            lambda: send.defer(None, **arguments),
            lambda: send.defer_many([1, 2], **arguments),
            lambda: asyncio.run(send.defer_async(None, **arguments)),
        ]
        for attempt in attempts:
            with pytest.raises(ConfigurationError) as caught:
                attempt()
            assert str(caught.value).startswith(message)
            assert "\n" not in str(caught.value)
        counts = db.execute(
            f'SELECT (SELECT count(*) FROM "{config.schema}".all_jobs), '
            f'(SELECT count(*) FROM "{config.schema}".job_definition)'
        ).fetchone()
        assert counts == (0, 0)

    def test_a_bad_tag_filter_is_refused_naming_tag(self, config: Config) -> None:
        """The filter is checked as a tag is."""
        with pytest.raises(ConfigurationError, match=r"^tag: must not contain control"):
            config.jobs.list(tag="a\x1b")
        with pytest.raises(ConfigurationError, match=r"^tag: must be a tag"):
            config.jobs.count(tag=["a"])  # type: ignore[arg-type]


class TestHistory:
    def test_finished_jobs_keep_their_tags_meta_and_last_progress(
        self, config: Config, db: psycopg.Connection[Any], recorder: EventRecorder
    ) -> None:
        """A success and a final failure both move into the history with the three columns."""

        def works(payload: Any, ctx: JobContext) -> None:
            ctx.set_progress(0.25)
            ctx.set_progress(1.0)

        def fails(payload: Any, ctx: JobContext) -> None:
            ctx.set_progress({"done": 2, "total": 3})
            raise RuntimeError("nope")

        ok = _define(config, "works", works).defer(None, tags=["a"], meta={"k": 1})
        bad = _define(config, "fails", fails).defer(None, tags=["b"], meta={"k": 2})
        with running(Worker(config, event_handler=recorder, concurrency=2)):
            recorder.wait_for(events.WorkerJobSucceeded)
            recorder.wait_for(events.WorkerJobFailed)
        assert _row(db, config, ok.id) == (True, "succeeded", ["a"], {"k": 1}, 1.0)
        assert _row(db, config, bad.id) == (
            True,
            "failed",
            ["b"],
            {"k": 2},
            {"done": 2, "total": 3},
        )

    def test_cancel_and_retry_carry_them_between_the_tables(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A cancel moves them into the history; a retry moves them back."""
        handle = _define(config, "send", lambda: None).defer(
            None, tags=["x", "y"], meta={"why": "test"}
        )
        db.execute(
            f"UPDATE \"{config.schema}\".job SET progress = '0.5' WHERE id = %s", [handle.id]
        )
        config.jobs.cancel(handle)
        assert _row(db, config, handle.id) == (True, "cancelled", ["x", "y"], {"why": "test"}, 0.5)
        config.jobs.retry(handle)
        assert _row(db, config, handle.id) == (
            False,
            "available",
            ["x", "y"],
            {"why": "test"},
            0.5,
        )

    def test_a_rescued_job_keeps_them_in_the_history(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The rescuer's move of a lost job without attempts left carries them too."""
        _define(config, "lost", lambda: None)
        handle = config.definitions["lost"].defer(None, tags=["t"], meta={"m": 1})
        runner = Runner(config)
        runner.start()
        try:
            claimed = runner.claim(definitions=["lost"])
            assert claimed is not None and claimed.tags == ("t",)
            db.execute(
                f"UPDATE \"{config.schema}\".job SET progress = '0.75', "
                "locked_until = now() - interval '1 minute' WHERE id = %s",
                [handle.id],
            )
            rescued = db.execute(
                config.queries["job_rescue_expired"],
                {"now": None, "limit": 10, "notify_channel": config.notify_channel},
            ).fetchall()
            assert [r[0] for r in rescued] == [handle.id]
        finally:
            runner.close()
        assert _row(db, config, handle.id) == (True, "failed", ["t"], {"m": 1}, 0.75)


class TestProgressWhileRunning:
    def _check_running_then_done(
        self, config: Config, handle: Any, go: Any, *, via_child: bool = False
    ) -> None:
        wait_until(
            lambda: handle.progress() == {"done": 1, "total": 2},
            timeout=60 if via_child else 10,
            message="the running job's progress was never written",
        )
        assert handle.status() == "running"
        go()
        result = handle.result(timeout=60)
        assert result == {"tags": ["t"], "meta": {"m": 1}}
        assert handle.progress() == {"done": 2, "total": 2}
        assert config.jobs.get(handle).progress == {"done": 2, "total": 2}

    def test_a_sync_job_reports_progress_while_it_runs(self, config: Config) -> None:
        """ctx.set_progress from a job thread reaches the row while the job still runs."""
        release = threading.Event()

        def job(payload: Any, ctx: JobContext) -> dict[str, Any]:
            ctx.set_progress({"done": 1, "total": 2})
            assert release.wait(30)
            ctx.set_progress({"done": 2, "total": 2})
            return {"tags": list(ctx.tags), "meta": dict(ctx.meta)}

        handle = _define(config, "sync", job).defer(None, tags=["t"], meta={"m": 1})
        with running(Worker(config)):
            self._check_running_then_done(config, handle, release.set)

    def test_an_async_job_reports_progress_while_it_runs(self, config: Config) -> None:
        """ctx.set_progress from an ``async def`` job on the worker's loop."""
        release = threading.Event()

        async def job(payload: Any, ctx: JobContext) -> dict[str, Any]:
            ctx.set_progress({"done": 1, "total": 2})
            # The test's thread sets a threading.Event: wait on it off the loop.
            assert await asyncio.to_thread(release.wait, 30)
            ctx.set_progress({"done": 2, "total": 2})
            return {"tags": list(ctx.tags), "meta": dict(ctx.meta)}

        handle = _define(config, "async", job).defer(None, tags=["t"], meta={"m": 1})
        with running(Worker(config)):
            self._check_running_then_done(config, handle, release.set)

    def test_a_job_in_a_child_process_reports_progress_while_it_runs(
        self, config: Config, tmp_path: Path
    ) -> None:
        """The child sends its progress to the worker, which writes it."""
        go = tmp_path / "go"
        definition = _define(config, "child", _progress_jobs.report_then_wait_for_file)
        handle = definition.defer({"go": str(go)}, tags=["t"], meta={"m": 1})
        with running(Worker(config, processes=1), join_timeout=60):
            self._check_running_then_done(config, handle, go.touch, via_child=True)

    def test_progress_writes_are_at_least_half_a_second_apart(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job reporting in a tight loop gets a write per 0.5 s at most; its last value is kept."""
        schema = f'"{config.schema}"'
        db.execute(
            f"CREATE TABLE {schema}.progress_log (at timestamptz NOT NULL, value jsonb);"
            f"CREATE FUNCTION {schema}.log_progress() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN INSERT INTO {schema}.progress_log VALUES (clock_timestamp(), NEW.progress); "
            "RETURN NEW; END $$;"
            f"CREATE TRIGGER log_progress AFTER UPDATE OF progress ON {schema}.job "
            "FOR EACH ROW WHEN (NEW.status = 'running') "
            f"EXECUTE FUNCTION {schema}.log_progress();"
        )
        definition = _define(config, "loop", _progress_jobs.report_in_a_tight_loop)
        handle = definition.defer({"n": 2000, "s": 1.6})
        with running(Worker(config)):
            reported = handle.result(timeout=60)
        writes = [r[0] for r in db.execute(f"SELECT at FROM {schema}.progress_log ORDER BY at")]
        assert reported >= 2000
        assert 2 <= len(writes) < reported
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(writes)]
        assert min(gaps) >= 0.49, gaps
        # The last value, held back by the rate limit, went with the finish.
        assert _row(db, config, handle.id)[4] == 1.0


class TestFencing:
    def test_a_superseded_attempt_cannot_write_progress(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """job_progress_set writes only under the lock token of the attempt running now."""
        _define(config, "fenced", lambda: None, num_attempts=3)
        handle = config.definitions["fenced"].defer(None)
        runner = Runner(config)
        runner.start()
        try:
            first = runner.claim(definitions=["fenced"])
            assert first is not None
            runner.release(first)  # as a rescue would: the attempt is over
            second = runner.claim(definitions=["fenced"])
            assert second is not None and second.token != first.token
            query = config.queries["job_progress_set"]

            def write(token: uuid.UUID, value: str) -> tuple[Any, ...]:
                row = db.execute(
                    query, {"ids": [handle.id], "tokens": [token], "progresses": [value]}
                ).fetchone()
                assert row is not None
                return tuple(row)

            assert write(first.token, "0.9") == ([], [])
            assert handle.progress() is None
            assert write(second.token, "0.2") == ([handle.id], [])
            assert handle.progress() == 0.2
        finally:
            runner.close()

    def test_a_row_held_by_another_transaction_is_skipped_and_said_busy(
        self, config: Config, test_dsn: str
    ) -> None:
        """The writer never waits for a finish or a heartbeat: it tries again next pass."""
        _define(config, "busy", lambda: None)
        handle = config.definitions["busy"].defer(None)
        runner = Runner(config)
        runner.start()
        try:
            claimed = runner.claim(definitions=["busy"])
            assert claimed is not None
            params = {"ids": [handle.id], "tokens": [claimed.token], "progresses": ["0.3"]}
            with psycopg.connect(test_dsn) as holder, psycopg.connect(test_dsn) as writer:
                holder.execute(
                    f'SELECT 1 FROM "{config.schema}".job WHERE id = %s FOR UPDATE', [handle.id]
                )
                row = writer.execute(config.queries["job_progress_set"], params).fetchone()
                writer.commit()
                assert row is not None and tuple(row) == ([], [handle.id])
                holder.rollback()
                row = writer.execute(config.queries["job_progress_set"], params).fetchone()
                writer.commit()
                assert row is not None and tuple(row) == ([handle.id], [])
        finally:
            runner.close()
        assert handle.progress() == 0.3

    def test_a_rescued_attempt_running_on_writes_nothing(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Once its lock token is no longer the job's, an attempt's progress is refused.

        A second job reports after the first one's refused value: once the
        second value is written, the writer has tried the first one.
        """
        first_reported, second_go, release = threading.Event(), threading.Event(), threading.Event()
        superseded = threading.Event()

        def first(payload: Any, ctx: JobContext) -> None:
            ctx.set_progress(0.1)
            assert superseded.wait(30)
            ctx.set_progress(0.7)
            first_reported.set()
            assert release.wait(30)

        def second(payload: Any, ctx: JobContext) -> None:
            assert second_go.wait(30)
            ctx.set_progress({"marker": 1})
            assert release.wait(30)

        one = _define(config, "first", first).defer(None)
        two = _define(config, "second", second).defer(None)
        with running(Worker(config, concurrency=2)):
            try:
                wait_until(lambda: one.progress() == 0.1)
                # What a rescue and another worker's claim do to the row.
                db.execute(
                    f'UPDATE "{config.schema}".job SET lock_token = %s WHERE id = %s',
                    [uuid.uuid4(), one.id],
                )
                superseded.set()
                assert first_reported.wait(30)
                second_go.set()
                wait_until(lambda: two.progress() == {"marker": 1})
                assert one.progress() == 0.1
            finally:
                release.set()


class TestTesting:
    def test_drain_gives_the_job_its_tags_and_meta_and_keeps_its_last_progress(
        self, config: Config
    ) -> None:
        """In orchestra.testing the last value is written with the attempt's end."""
        seen: dict[str, Any] = {}

        def job(payload: Any, ctx: JobContext) -> None:
            seen.update(tags=ctx.tags, meta=dict(ctx.meta))
            for i in range(1, 101):
                ctx.set_progress({"done": i, "total": 100})

        handle = _define(config, "drained", job).defer(None, tags=["t"], meta={"m": 1})
        assert drain(config).succeeded == 1
        assert seen == {"tags": ("t",), "meta": {"m": 1}}
        assert handle.progress() == {"done": 100, "total": 100}

    def test_drain_async_runs_an_async_job_that_reports_progress(self, config: Config) -> None:
        """The async path keeps the last value too."""

        async def job(payload: Any, ctx: JobContext) -> None:
            ctx.set_progress(0.5)
            await asyncio.sleep(0)
            ctx.set_progress(0.75)

        handle = _define(config, "drained_async", job).defer(None)
        assert asyncio.run(drain_async(config)).succeeded == 1
        assert handle.progress() == 0.75
        assert asyncio.run(handle.progress_async()) == 0.75
