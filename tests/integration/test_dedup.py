"""Deduplication against a real PostgreSQL: ``unique_key=`` and ``dedup=``.

While an unfinished job of a definition holds a unique key, ``defer`` inserts
nothing and returns that job's handle with ``deduplicated=True``; the partial
unique index ``(definition, unique_key) WHERE finalized_at IS NULL`` decides,
so racing producers cannot both insert.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql

from orchestra import Config, ConfigurationError, JobDefinition, JobHandle, UnknownJobError
from orchestra._checks import KEY_MAX_LENGTH
from orchestra.testing import wait_until
from tests._finished_jobs import finish_by_sql
from tests._worker_sql import claim, finish


@attrs.frozen
class Invoice:
    """A typed payload."""

    customer: str
    amount: int


def noop(payload: object) -> None:
    """A job function that does nothing."""


def plain(config: Config, name: str = "plain", **kwargs: Any) -> JobDefinition[Any]:
    """A definition taking plain JSON payloads."""
    return JobDefinition(config, name=name, job_function=noop, **kwargs)


def count(db: psycopg.Connection[Any], config: Config, table: str = "job") -> int:
    """The number of rows of ``table`` in the config's schema."""
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(config.schema, table))
    row = db.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def job_rows(db: psycopg.Connection[Any], config: Config) -> list[tuple[Any, ...]]:
    """(id, definition, payload, priority, unique_key, status) of every job, by id."""
    return db.execute(
        f'SELECT id, definition, payload, priority, unique_key, status::text FROM "{config.schema}".all_jobs ORDER BY id'
    ).fetchall()


def finalize(db: psycopg.Connection[Any], config: Config, job_id: int, status: str) -> None:
    """Finalize a job behind orchestra's back (as an operator's SQL would)."""
    finish_by_sql(db, config, job_id, status)


def finish_failed(db: psycopg.Connection[Any], config: Config, claimed: tuple[Any, ...]) -> str:
    """Record a failed attempt through the worker's fenced statement; the new status."""
    rows = finish(db, config, claimed, "failed")
    assert len(rows) == 1
    return str(rows[0][1])


def lock_waiters(db: psycopg.Connection[Any], config: Config) -> int:
    """Sessions blocked on a heavyweight lock while running a statement on this schema."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND position(%s IN query) > 0",
        [config.schema],
    ).fetchone()
    assert row is not None
    return int(row[0])


class TestUniqueKey:
    def test_second_defer_returns_the_holder_and_inserts_nothing(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A defer whose unique_key an unfinished job holds returns that job's handle, deduplicated, and writes no row."""
        definition = plain(config)
        first = definition.defer({"n": 1}, unique_key="user-42")
        second = definition.defer({"n": 2}, unique_key="user-42", priority=50)
        assert first.deduplicated is False
        assert second.deduplicated is True
        assert second == first and second.id == first.id
        # The holder's own payload and priority stand.
        assert job_rows(db, config) == [(first.id, "plain", {"n": 1}, 0, "user-42", "available")]

    def test_running_holder_and_holder_awaiting_retry_still_hold_the_key(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job that is running, or failed with attempts left (available again), still holds its key."""
        definition = plain(config, num_attempts=3, backoff="none")
        holder = definition.defer({}, unique_key="k")
        claimed = claim(db, config)
        assert [c[0] for c in claimed] == [holder.id]
        running = definition.defer({}, unique_key="k")
        assert (running.id, running.deduplicated) == (holder.id, True)
        assert finish_failed(db, config, claimed[0]) == "available"
        retrying = definition.defer({}, unique_key="k")
        assert (retrying.id, retrying.deduplicated) == (holder.id, True)
        assert count(db, config) == 1

    def test_same_key_of_another_definition_is_not_a_duplicate(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Unique keys are per definition: another definition's job with the same key is a new job."""
        a = plain(config, "a").defer({}, unique_key="shared")
        b = plain(config, "b").defer({}, unique_key="shared")
        assert a.id != b.id
        assert not a.deduplicated and not b.deduplicated
        assert [(r[1], r[4]) for r in job_rows(db, config)] == [("a", "shared"), ("b", "shared")]

    @pytest.mark.parametrize("final_status", ["succeeded", "failed", "cancelled"])
    def test_key_is_free_again_once_the_holder_is_finalized(
        self, config: Config, db: psycopg.Connection[Any], final_status: str
    ) -> None:
        """After the holder is finalized (succeeded, failed or cancelled) the key makes a new job, which then holds it."""
        definition = plain(config)
        old = definition.defer({"n": 1}, unique_key="k")
        finalize(db, config, old.id, final_status)
        new = definition.defer({"n": 2}, unique_key="k")
        assert new.id != old.id and new.deduplicated is False
        again = definition.defer({"n": 3}, unique_key="k")
        assert (again.id, again.deduplicated) == (new.id, True)
        assert [(r[0], r[5]) for r in job_rows(db, config)] == [
            (old.id, final_status),
            (new.id, "available"),
        ]

    def test_key_freed_by_a_real_final_failure(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job finalized as failed by the worker's own finish statement frees its key."""
        definition = plain(config, num_attempts=1)
        old = definition.defer({}, unique_key="k")
        assert finish_failed(db, config, claim(db, config)[0]) == "failed"
        new = definition.defer({}, unique_key="k")
        assert new.id != old.id and not new.deduplicated

    def test_unknown_dependency_still_raises_with_a_unique_key(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """With a unique key that nobody holds, an unknown dependency raises UnknownJobError and writes nothing."""
        definition = plain(config)
        with pytest.raises(UnknownJobError) as info:
            definition.defer({}, unique_key="k", depends_on=[987654])
        assert info.value.job_ids == (987654,)
        assert count(db, config) == 0


class TestDedupPayload:
    def test_dedup_ignores_the_key_order_of_objects(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """With dedup=True two payloads equal up to object key order (nested too) are one job."""
        definition = plain(config)
        first = definition.defer({"a": 1, "b": {"x": [1, 2], "y": "z"}}, dedup=True)
        second = definition.defer({"b": {"y": "z", "x": [1, 2]}, "a": 1}, dedup=True)
        assert (second.id, second.deduplicated) == (first.id, True)
        rows = job_rows(db, config)
        assert len(rows) == 1
        assert str(rows[0][4]).startswith("sha256:")

    @pytest.mark.parametrize(
        ("one", "other"),
        [({"n": 1}, {"n": 1.0}), ({"n": [100, -0.0]}, {"n": [1e2, 0]})],
    )
    def test_dedup_compares_numbers_by_value(self, config: Config, one: Any, other: Any) -> None:
        """1 and 1.0 are the same JSON number (and equal as jsonb): one job."""
        definition = plain(config)
        first = definition.defer(one, dedup=True)
        second = definition.defer(other, dedup=True)
        assert (second.id, second.deduplicated) == (first.id, True)

    @pytest.mark.parametrize(
        ("one", "other"),
        [
            ({"a": 1}, {"a": 2}),
            ({"a": 1.5}, {"a": 1}),
            ({"a": [1, 2]}, {"a": [2, 1]}),
            ({"a": 1}, {"a": 1, "b": None}),
            ({"a": "1"}, {"a": 1}),
        ],
    )
    def test_dedup_distinguishes_different_payloads(
        self, config: Config, db: psycopg.Connection[Any], one: Any, other: Any
    ) -> None:
        """With dedup=True payloads that differ (value, list order, extra key, type) are two jobs."""
        definition = plain(config)
        first = definition.defer(one, dedup=True)
        second = definition.defer(other, dedup=True)
        assert first.id != second.id
        assert not second.deduplicated
        keys = [r[4] for r in job_rows(db, config)]
        assert len(keys) == 2 and keys[0] != keys[1]

    def test_dedup_of_typed_payloads(self, config: Config, db: psycopg.Connection[Any]) -> None:
        """Equal attrs payloads deduplicate; different ones do not."""
        definition: JobDefinition[Invoice] = JobDefinition(
            config, name="invoice", job_function=noop, payload_type=Invoice
        )
        a = definition.defer(Invoice("ada", 10), dedup=True)
        b = definition.defer(Invoice("ada", 10), dedup=True)
        c = definition.defer(Invoice("ada", 11), dedup=True)
        assert (b.id, b.deduplicated) == (a.id, True)
        assert c.id != a.id and not c.deduplicated
        assert count(db, config) == 2

    def test_dedup_key_is_per_definition(self, config: Config, db: psycopg.Connection[Any]) -> None:
        """The same payload deferred with dedup=True to two definitions makes two jobs."""
        a = plain(config, "a").defer({"n": 1}, dedup=True)
        b = plain(config, "b").defer({"n": 1}, dedup=True)
        assert a.id != b.id and not b.deduplicated
        assert count(db, config) == 2

    def test_definition_default_and_per_call_override(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """JobDefinition(dedup=True) deduplicates by default; defer(dedup=False) inserts a job without a key."""
        definition = plain(config, dedup=True)
        first = definition.defer({"n": 1})
        second = definition.defer({"n": 1})
        forced = definition.defer({"n": 1}, dedup=False)
        third = definition.defer({"n": 1})
        assert (second.id, second.deduplicated) == (first.id, True)
        assert forced.id != first.id and not forced.deduplicated
        assert (third.id, third.deduplicated) == (first.id, True)
        rows = job_rows(db, config)
        assert [r[0] for r in rows] == [first.id, forced.id]
        assert rows[0][4] is not None and rows[1][4] is None

    def test_plain_definition_does_not_dedup_unless_asked(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Without dedup, identical payloads are two jobs; defer(dedup=True) opts in per call."""
        definition = plain(config)
        a = definition.defer({"n": 1})
        b = definition.defer({"n": 1})
        c = definition.defer({"n": 1}, dedup=True)
        d = definition.defer({"n": 1}, dedup=True)
        assert len({a.id, b.id, c.id}) == 3
        assert (d.id, d.deduplicated) == (c.id, True)
        assert count(db, config) == 3

    def test_explicit_unique_key_wins_over_the_definition_default(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """On a dedup=True definition, an explicit unique_key is the key (not the payload hash)."""
        definition = plain(config, dedup=True)
        a = definition.defer({"n": 1}, unique_key="mine")
        b = definition.defer({"n": 2}, unique_key="mine")
        c = definition.defer({"n": 1}, unique_key="mine", dedup=False)
        assert b.id == a.id and c.id == a.id and b.deduplicated and c.deduplicated
        assert [r[4] for r in job_rows(db, config)] == ["mine"]


class TestValidation:
    def test_unique_key_with_dedup_true_is_refused_naming_dedup(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """unique_key together with dedup=True raises ConfigurationError naming ``dedup``; nothing is written."""
        definition = plain(config)
        with pytest.raises(ConfigurationError) as info:
            definition.defer({}, unique_key="k", dedup=True)
        assert info.value.argument == "dedup"

        async def deferring() -> None:
            try:
                await definition.defer_async({}, unique_key="k", dedup=True)
            finally:
                await config.close_async()

        with pytest.raises(ConfigurationError) as async_info:
            asyncio.run(deferring())
        assert async_info.value.argument == "dedup"
        assert count(db, config) == 0
        assert count(db, config, "job_definition") == 0

    @pytest.mark.parametrize(
        "key",
        ["", "k" * (KEY_MAX_LENGTH + 1), 42, b"bytes", ["k"], "nul\x00inside"],
        ids=["empty", "too-long", "int", "bytes", "list", "nul"],
    )
    def test_bad_unique_key_is_refused_naming_it(
        self, config: Config, db: psycopg.Connection[Any], key: Any
    ) -> None:
        """An empty, over-long (> 512), non-str or NUL-carrying unique_key raises ConfigurationError naming it."""
        definition = plain(config)
        with pytest.raises(ConfigurationError) as info:
            definition.defer({}, unique_key=key)
        assert info.value.argument == "unique_key"
        assert count(db, config) == 0
        assert count(db, config, "job_definition") == 0

    def test_longest_unique_key_is_accepted(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A unique_key of exactly 512 characters is accepted and deduplicates."""
        definition = plain(config)
        key = "é" * KEY_MAX_LENGTH
        a = definition.defer({}, unique_key=key)
        b = definition.defer({}, unique_key=key)
        assert (b.id, b.deduplicated) == (a.id, True)
        assert [r[4] for r in job_rows(db, config)] == [key]

    @pytest.mark.parametrize("dedup", ["yes", 1, 0])
    def test_bad_dedup_flag_is_refused(
        self, config: Config, db: psycopg.Connection[Any], dedup: Any
    ) -> None:
        """dedup must be a bool (or None), on defer and on the definition."""
        definition = plain(config)
        with pytest.raises(ConfigurationError) as info:
            definition.defer({}, dedup=dedup)
        assert info.value.argument == "dedup"
        with pytest.raises(ConfigurationError) as definition_info:
            plain(config, "other", dedup=dedup)
        assert definition_info.value.argument == "dedup"
        assert count(db, config) == 0


class TestTransactions:
    def test_dedup_inside_the_callers_transaction(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Two defers with one key in the caller's transaction make one job, which exists once committed."""
        definition = plain(config)
        with config.connect() as conn, conn.transaction():
            first = definition.defer({"n": 1}, unique_key="k", conn=conn)
            second = definition.defer({"n": 2}, unique_key="k", conn=conn)
            also = definition.defer({"n": 1}, dedup=True, conn=conn)
            same = definition.defer({"n": 1}, dedup=True, conn=conn)
            assert count(db, config) == 0  # not committed yet
        assert (second.id, second.deduplicated) == (first.id, True)
        assert (same.id, same.deduplicated) == (also.id, True)
        assert [r[0] for r in job_rows(db, config)] == [first.id, also.id]

    def test_rolled_back_holder_leaves_the_key_free(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job deferred with a key in a transaction that rolls back does not hold the key."""
        definition = plain(config)
        with config.connect() as conn, conn.transaction(force_rollback=True):
            ghost = definition.defer({}, unique_key="k", conn=conn)
        fresh = definition.defer({}, unique_key="k")
        assert fresh.id != ghost.id and not fresh.deduplicated
        assert [r[0] for r in job_rows(db, config)] == [fresh.id]

    @pytest.mark.parametrize("outcome", ["commit", "rollback"])
    def test_producer_waits_for_an_uncommitted_holder(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any], outcome: str
    ) -> None:
        """A defer racing an open transaction that holds the key waits for it: committed, it dedups to it; rolled back, it inserts."""
        definition = plain(config)
        other = Config(test_dsn, schema=config.schema)
        rival = plain(other)
        try:
            with other.connection() as setup:
                rival.upsert(setup)  # written now: the rival can only block on the key
            with (
                config.connect() as conn,
                concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool,
            ):
                conn.execute("BEGIN")
                holder = definition.defer({"who": "tx"}, unique_key="k", conn=conn)
                future = pool.submit(rival.defer, {"who": "rival"}, unique_key="k")
                wait_until(
                    lambda: lock_waiters(db, config) == 1,
                    message="the rival defer never waited for the open transaction",
                )
                assert not future.done()
                conn.execute("COMMIT" if outcome == "commit" else "ROLLBACK")
                result = future.result(timeout=10)
        finally:
            other.close()
        rows = job_rows(db, config)
        if outcome == "commit":
            assert (result.id, result.deduplicated) == (holder.id, True)
            assert [(r[0], r[2]) for r in rows] == [(holder.id, {"who": "tx"})]
        else:
            assert result.deduplicated is False
            assert [(r[0], r[2]) for r in rows] == [(result.id, {"who": "rival"})]


class TestAsync:
    def test_defer_async_deduplicates(self, config: Config, db: psycopg.Connection[Any]) -> None:
        """defer_async returns the holder's handle for a held unique_key and for an equal payload with dedup=True."""
        definition = plain(config)

        async def deferring() -> list[JobHandle]:
            try:
                return [
                    await definition.defer_async({"n": 1}, unique_key="k"),
                    await definition.defer_async({"n": 2}, unique_key="k"),
                    await definition.defer_async({"a": 1, "b": 2}, dedup=True),
                    await definition.defer_async({"b": 2, "a": 1}, dedup=True),
                ]
            finally:
                await config.close_async()

        keyed, keyed_again, hashed, hashed_again = asyncio.run(deferring())
        assert (keyed_again.id, keyed_again.deduplicated) == (keyed.id, True)
        assert (hashed_again.id, hashed_again.deduplicated) == (hashed.id, True)
        assert not keyed.deduplicated and not hashed.deduplicated
        assert [r[0] for r in job_rows(db, config)] == [keyed.id, hashed.id]

    def test_defer_async_in_the_callers_transaction(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """defer_async(conn=...) dedups inside the transaction; a rollback frees the key."""
        definition = plain(config)

        async def deferring() -> tuple[JobHandle, JobHandle, JobHandle]:
            try:
                async with await psycopg.AsyncConnection.connect(test_dsn, autocommit=True) as conn:
                    async with conn.transaction(force_rollback=True):
                        ghost = await definition.defer_async({}, unique_key="k", conn=conn)
                        ghost_again = await definition.defer_async({}, unique_key="k", conn=conn)
                    assert (ghost_again.id, ghost_again.deduplicated) == (ghost.id, True)
                    async with conn.transaction():
                        kept = await definition.defer_async({}, unique_key="k", conn=conn)
                return ghost, ghost_again, kept
            finally:
                await config.close_async()

        ghost, _, kept = asyncio.run(deferring())
        assert kept.id != ghost.id and not kept.deduplicated
        assert [r[0] for r in job_rows(db, config)] == [kept.id]


class TestConcurrentProducers:
    PRODUCERS = 8
    ROUNDS = 5

    def test_racing_threads_on_one_unique_key_create_one_job(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """8 producers, each with its own Config and connection, released together by a barrier, make one job per key."""
        barrier = threading.Barrier(self.PRODUCERS, timeout=30)

        def producer(index: int) -> list[JobHandle]:
            own = Config(test_dsn, schema=config.schema)
            try:
                definition = plain(own, "raced")
                own.check_schema()  # the pool is open before the race
                handles = []
                for round_ in range(self.ROUNDS):
                    barrier.wait()
                    handles.append(definition.defer({"by": index}, unique_key=f"race-{round_}"))
                return handles
            finally:
                own.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.PRODUCERS) as pool:
            futures = [pool.submit(producer, i) for i in range(self.PRODUCERS)]
            results = [f.result(timeout=60) for f in futures]

        rows = job_rows(db, config)
        assert sorted(r[4] for r in rows) == [f"race-{n}" for n in range(self.ROUNDS)]
        for round_ in range(self.ROUNDS):
            handles = [r[round_] for r in results]
            (row_id,) = [r[0] for r in rows if r[4] == f"race-{round_}"]
            assert {h.id for h in handles} == {row_id}
            assert sorted(h.deduplicated for h in handles) == [False] + [True] * (
                self.PRODUCERS - 1
            )

    def test_racing_defer_async_with_equal_payloads_create_one_job(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """8 concurrent defer_async(dedup=True) of payloads equal up to key order make one job."""
        definition = plain(config, "raced")
        payloads = [
            {"a": 1, "b": [1, 2], "c": {"d": None}},
            {"c": {"d": None}, "b": [1, 2], "a": 1},
        ]

        async def race() -> list[JobHandle]:
            try:
                await definition.defer_async({"warm": True})  # pool and definition row ready
                return await asyncio.gather(
                    *(
                        definition.defer_async(payloads[i % 2], dedup=True)
                        for i in range(self.PRODUCERS)
                    )
                )
            finally:
                await config.close_async()

        handles = asyncio.run(race())
        rows = [r for r in job_rows(db, config) if r[2] != {"warm": True}]
        assert len(rows) == 1
        assert {h.id for h in handles} == {rows[0][0]}
        assert sorted(h.deduplicated for h in handles) == [False] + [True] * (self.PRODUCERS - 1)
