"""Deferring jobs against a real PostgreSQL: rows, delays, dependencies, transactions, notifies."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
import zoneinfo
from collections.abc import Iterator
from typing import Any, TypedDict, cast

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from orchestra import (
    Config,
    ConfigurationError,
    JobDefinition,
    JobHandle,
    PayloadError,
    UnknownJobError,
    _converter,
)
from tests._finished_jobs import finish_by_sql
from tests._worker_sql import claim as claim_rows

SENTINEL = "test-sentinel"


@attrs.frozen
class Order:
    """A typed payload with fields that are not JSON natively."""

    order_id: uuid.UUID
    placed_at: dt.datetime
    amount: int


@dataclasses.dataclass(frozen=True)
class Ping:
    """A dataclass payload."""

    host: str
    count: int = 1


class Point(TypedDict):
    """A TypedDict payload."""

    x: int
    y: int


def noop(payload: object) -> None:
    """A job function that does nothing."""


def plain(config: Config, name: str = "plain", **kwargs: Any) -> JobDefinition[Any]:
    """A definition taking plain JSON payloads."""
    return JobDefinition(config, name=name, job_function=noop, **kwargs)


def jobs(db: psycopg.Connection[Any], config: Config) -> list[dict[str, Any]]:
    """Every job row of the config's schema, by id."""
    query = sql.SQL("SELECT *, status::text AS status FROM {} ORDER BY id").format(
        sql.Identifier(config.schema, "job")
    )
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(query).fetchall()


def job(db: psycopg.Connection[Any], config: Config, job_id: int) -> dict[str, Any]:
    """The job row ``job_id``; fails the test if it is missing."""
    query = sql.SQL("SELECT *, status::text AS status FROM {} WHERE id = %s").format(
        sql.Identifier(config.schema, "job")
    )
    with db.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, [job_id]).fetchone()
    assert row is not None, f"job {job_id} not found"
    return row


def count(db: psycopg.Connection[Any], config: Config, table: str = "job") -> int:
    """The number of rows of ``table`` in the config's schema."""
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(config.schema, table))
    row = db.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def dependencies(db: psycopg.Connection[Any], config: Config) -> set[tuple[int, int]]:
    """Every (job_id, required_job_id) edge."""
    query = sql.SQL("SELECT job_id, required_job_id FROM {}").format(
        sql.Identifier(config.schema, "job_dependency")
    )
    return {(int(r[0]), int(r[1])) for r in db.execute(query).fetchall()}


def mark_succeeded(db: psycopg.Connection[Any], config: Config, *job_ids: int) -> None:
    """Finalize jobs as succeeded behind orchestra's back."""
    for job_id in job_ids:
        finish_by_sql(db, config, job_id, "succeeded")


def claim(
    db: psycopg.Connection[Any],
    config: Config,
    now: dt.datetime | None = None,
    channel: str = "_default",
) -> list[int]:
    """Run the job_claim query as a worker would; return the claimed ids."""
    rows = claim_rows(db, config, channel=channel, now=now, limit=10)
    return sorted(int(r[0]) for r in rows)


@pytest.fixture
def listener(test_dsn: str, config: Config) -> Iterator[psycopg.Connection[Any]]:
    """A connection LISTENing on the config's wake-up channel."""
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(config.notify_channel)))
        yield conn


def notifications(
    listener: psycopg.Connection[Any], db: psycopg.Connection[Any], config: Config
) -> list[str]:
    """The payloads notified so far on the wake-up channel.

    A sentinel NOTIFY is sent last; PostgreSQL delivers notifications in commit
    order, so reading up to the sentinel sees every earlier one without sleeping.
    """
    db.execute("SELECT pg_notify(%s, %s)", [config.notify_channel, SENTINEL])
    seen: list[str] = []
    for notify in listener.notifies(timeout=10):
        if notify.channel != config.notify_channel:
            continue
        if notify.payload == SENTINEL:
            return seen
        seen.append(notify.payload)
    raise AssertionError(f"the sentinel notification never arrived; saw {seen}")


class TestDeferRow:
    def test_defer_returns_handle_and_writes_available_row(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """defer returns a JobHandle with an int id whose row is available, unfinalized, attempt 0."""
        definition = plain(config, "mail")
        handle = definition.defer({"to": "a@example.com", "tags": ["x", "y"]})
        assert isinstance(handle, JobHandle)
        assert isinstance(handle.id, int)
        assert int(handle) == handle.id
        row = job(db, config, handle.id)
        assert row["status"] == "available"
        assert row["finalized_at"] is None
        assert row["result"] is None
        assert row["attempt"] == 0
        assert row["definition"] == "mail"
        assert row["channel"] == "_default"
        assert row["payload"] == {"to": "a@example.com", "tags": ["x", "y"]}

    @pytest.mark.parametrize(
        "payload",
        [
            {"nested": [1, 2, {"deep": None}], "flag": True},
            [1, "two", 3.5],
            "héllo ✓",
            42,
            False,
            None,
        ],
    )
    def test_plain_json_payload_stored_verbatim(
        self, config: Config, db: psycopg.Connection[Any], payload: Any
    ) -> None:
        """Any plain JSON value is stored as exactly that JSON."""
        handle = plain(config).defer(payload)
        assert job(db, config, handle.id)["payload"] == payload

    def test_typed_payload_round_trips(self, config: Config, db: psycopg.Connection[Any]) -> None:
        """An attrs payload is stored with ISO datetimes and string uuids and structures back equal."""
        definition: JobDefinition[Order] = JobDefinition(
            config, name="order", job_function=noop, payload_type=Order
        )
        order = Order(
            order_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
            placed_at=dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.UTC),
            amount=3,
        )
        handle = definition.defer(order)
        stored = job(db, config, handle.id)["payload"]
        assert stored == {
            "order_id": "12345678-1234-5678-1234-567812345678",
            "placed_at": "2024-02-29T23:59:58.123456+00:00",
            "amount": 3,
        }
        assert _converter.decode_payload(stored, Order) == order

    def test_dataclass_and_typeddict_payloads_stored(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Dataclass and TypedDict payloads are stored as their JSON objects."""
        pings: JobDefinition[Ping] = JobDefinition(
            config, name="ping", job_function=noop, payload_type=Ping
        )
        points: JobDefinition[Point] = JobDefinition(
            config, name="point", job_function=noop, payload_type=Point
        )
        ping = pings.defer(Ping(host="db1"))
        point = points.defer({"x": 1, "y": -2})
        assert job(db, config, ping.id)["payload"] == {"host": "db1", "count": 1}
        assert job(db, config, point.id)["payload"] == {"x": 1, "y": -2}


class TestDelay:
    def test_delay_sets_run_at_and_hides_job_until_due(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """delay_ms=5000 gives run_at = created_at + 5 s; the job is claimable only from then."""
        handle = plain(config).defer({"n": 1}, delay_ms=5000)
        row = job(db, config, handle.id)
        assert row["run_at"] - row["created_at"] == dt.timedelta(seconds=5)
        assert claim(db, config) == []
        assert claim(db, config, now=row["created_at"] + dt.timedelta(seconds=4)) == []
        assert claim(db, config, now=row["created_at"] + dt.timedelta(seconds=6)) == [handle.id]

    def test_delay_accepts_timedelta(self, config: Config, db: psycopg.Connection[Any]) -> None:
        """delay_ms given as a timedelta delays by that much."""
        handle = plain(config).defer(None, delay_ms=dt.timedelta(minutes=2, milliseconds=250))
        row = job(db, config, handle.id)
        assert row["run_at"] - row["created_at"] == dt.timedelta(minutes=2, milliseconds=250)

    def test_explicit_run_at_is_honoured(self, config: Config, db: psycopg.Connection[Any]) -> None:
        """run_at as an aware datetime in any zone is stored as that instant and gates the claim."""
        when = dt.datetime(
            2031, 5, 17, 12, 30, 15, 123456, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")
        )
        handle = plain(config).defer({"n": 1}, run_at=when)
        assert job(db, config, handle.id)["run_at"] == when
        assert claim(db, config) == []
        assert claim(db, config, now=when - dt.timedelta(seconds=1)) == []
        assert claim(db, config, now=when) == [handle.id]

    def test_defer_many_delay_applies_to_every_job(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """defer_many with delay_ms delays every job of the batch."""
        handles = plain(config).defer_many([{"n": 1}, {"n": 2}], delay_ms=5000)
        rows = jobs(db, config)
        assert [r["id"] for r in rows] == [h.id for h in handles]
        assert all(r["run_at"] - r["created_at"] == dt.timedelta(seconds=5) for r in rows)
        assert claim(db, config) == []

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"run_at": dt.datetime(2031, 1, 1)},  # noqa: DTZ001 (the naive datetime is the point)
            {"run_at": dt.datetime(2031, 1, 1, tzinfo=dt.UTC), "delay_ms": 10},
            {"delay_ms": -1},
        ],
    )
    def test_bad_timing_rejected_and_nothing_written(
        self, config: Config, db: psycopg.Connection[Any], kwargs: dict[str, Any]
    ) -> None:
        """A naive run_at, run_at with delay_ms, or a negative delay raises ConfigurationError."""
        with pytest.raises(ConfigurationError):
            plain(config).defer({"n": 1}, **kwargs)
        assert count(db, config) == 0


class TestDependencies:
    def test_unknown_dependency_writes_nothing(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A dependency on a missing job raises UnknownJobError and writes no job and no edge."""
        with pytest.raises(UnknownJobError) as info:
            plain(config).defer({"n": 1}, depends_on=[987654321])
        assert 987654321 in info.value.job_ids
        assert count(db, config, "job") == 0
        assert count(db, config, "job_dependency") == 0

    def test_one_unknown_among_known_dependencies_writes_nothing(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """One missing id among existing dependencies still writes nothing new."""
        definition = plain(config)
        existing = definition.defer({"n": 1})
        with pytest.raises(UnknownJobError):
            definition.defer({"n": 2}, depends_on=[existing, 987654321])
        assert [r["id"] for r in jobs(db, config)] == [existing.id]
        assert count(db, config, "job_dependency") == 0

    def test_error_names_only_the_missing_ids(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """UnknownJobError.job_ids lists only the dependency ids that do not exist."""
        definition = plain(config)
        existing = definition.defer({"n": 1})
        with pytest.raises(UnknownJobError) as info:
            definition.defer({"n": 2}, depends_on=[existing, 987654321])
        assert info.value.job_ids == (987654321,)

    def test_unknown_dependency_async_writes_nothing(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """defer_async with a missing dependency raises UnknownJobError and writes nothing."""
        definition = plain(config)

        async def defer_unknown() -> None:
            try:
                await definition.defer_async({"n": 1}, depends_on=[987654321])
            finally:
                await config.close_async()

        with pytest.raises(UnknownJobError):
            asyncio.run(defer_unknown())
        assert count(db, config, "job") == 0
        assert count(db, config, "job_dependency") == 0

    @pytest.mark.parametrize("bad", [0, -5, "12", 1.5, True])
    def test_malformed_dependency_rejected_before_writing(
        self, config: Config, db: psycopg.Connection[Any], bad: Any
    ) -> None:
        """A dependency that is not a positive int or JobHandle raises ConfigurationError."""
        with pytest.raises(ConfigurationError):
            plain(config).defer({"n": 1}, depends_on=[bad])
        assert count(db, config) == 0

    def test_two_dependencies_make_two_edges_and_wait(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """depends_on [a, b] writes exactly the edges (new, a), (new, b) and the job waits."""
        definition = plain(config)
        a = definition.defer({"n": "a"})
        b = definition.defer({"n": "b"})
        child = definition.defer({"n": "child"}, depends_on=[a, b.id])
        assert dependencies(db, config) == {(child.id, a.id), (child.id, b.id)}
        assert job(db, config, child.id)["status"] == "waiting"
        assert child.status() == "waiting"
        assert claim(db, config, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)) == [a.id, b.id]

    def test_waits_while_one_dependency_is_unfinished(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job is waiting when one of its dependencies succeeded and the other has not."""
        definition = plain(config)
        a = definition.defer({"n": "a"})
        b = definition.defer({"n": "b"})
        mark_succeeded(db, config, a.id)
        child = definition.defer({"n": "child"}, depends_on=[a, b])
        assert job(db, config, child.id)["status"] == "waiting"

    def test_available_when_every_dependency_succeeded(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A job whose dependencies all succeeded already is available at once."""
        definition = plain(config)
        a = definition.defer({"n": "a"})
        b = definition.defer({"n": "b"})
        mark_succeeded(db, config, a.id, b.id)
        child = definition.defer({"n": "child"}, depends_on=[a, b])
        assert job(db, config, child.id)["status"] == "available"
        assert dependencies(db, config) == {(child.id, a.id), (child.id, b.id)}

    def test_repeated_dependency_makes_one_edge(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """The same dependency given twice, as handle and as id, makes one edge."""
        definition = plain(config)
        a = definition.defer({"n": "a"})
        child = definition.defer({"n": "child"}, depends_on=[a, a.id, a])
        assert dependencies(db, config) == {(child.id, a.id)}

    def test_dependency_deferred_in_the_same_transaction(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """A job may depend on a job deferred earlier in the same, still open, transaction."""
        definition = plain(config)
        with psycopg.connect(test_dsn, autocommit=True) as conn, conn.transaction():
            parent = definition.defer({"n": "parent"}, conn=conn)
            child = definition.defer({"n": "child"}, depends_on=[parent], conn=conn)
        assert dependencies(db, config) == {(child.id, parent.id)}
        assert job(db, config, child.id)["status"] == "waiting"


class TestDuplicates:
    def test_identical_defers_create_two_jobs(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Two identical defers are not deduplicated: two rows with the same payload."""
        definition = plain(config)
        first = definition.defer({"same": 1})
        second = definition.defer({"same": 1})
        assert first.id != second.id
        assert [r["payload"] for r in jobs(db, config)] == [{"same": 1}, {"same": 1}]


class TestTransactionalEnqueue:
    def test_committed_transaction_makes_job_visible(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """A job deferred with conn= is invisible to others until commit, then visible."""
        definition = plain(config)
        with psycopg.connect(test_dsn, autocommit=True) as conn:
            with conn.transaction():
                handle = definition.defer({"n": 1}, conn=conn)
                assert count(db, config) == 0
                with pytest.raises(UnknownJobError):
                    handle.status()
            assert job(db, config, handle.id)["status"] == "available"
            assert handle.status() == "available"

    def test_rolled_back_transaction_leaves_no_job(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """A job deferred with conn= in a rolled-back transaction leaves no row, and defer still works after."""
        definition = plain(config)
        with psycopg.connect(test_dsn, autocommit=True) as conn:
            with conn.transaction(force_rollback=True):
                handle = definition.defer({"n": 1}, conn=conn)
                many = definition.defer_many([{"n": 2}, {"n": 3}], conn=conn)
                assert len(many) == 2
            assert count(db, config) == 0
            with pytest.raises(UnknownJobError):
                handle.status()
        later = definition.defer({"n": 4})
        assert [r["id"] for r in jobs(db, config)] == [later.id]

    def test_non_autocommit_connection_commit_and_rollback(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """On a non-autocommit connection a deferred job exists only once the caller commits."""
        definition = plain(config)
        with psycopg.connect(test_dsn) as conn:
            dropped = definition.defer({"n": "dropped"}, conn=conn)
            conn.rollback()
            kept = definition.defer({"n": "kept"}, conn=conn)
            assert count(db, config) == 0
            conn.commit()
        assert [r["id"] for r in jobs(db, config)] == [kept.id]
        assert dropped.id != kept.id

    def test_open_transaction_deferring_a_dependent_does_not_block_claim(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """A job stays claimable while another transaction is deferring a job that depends on it."""
        definition = plain(config)
        parent = definition.defer({"n": "parent"})
        with psycopg.connect(test_dsn, autocommit=True) as conn, conn.transaction():
            definition.defer({"n": "child"}, depends_on=[parent], conn=conn)
            assert claim(db, config) == [parent.id]


class TestDeferMany:
    def test_defer_many_returns_handles_in_input_order(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """defer_many returns one handle per payload, in input order, with increasing ids."""
        payloads = [{"i": i} for i in range(50)]
        handles = plain(config).defer_many(payloads)
        ids = [h.id for h in handles]
        assert len(ids) == 50
        assert ids == sorted(ids)
        assert len(set(ids)) == 50
        stored = {r["id"]: r["payload"] for r in jobs(db, config)}
        assert [stored[i] for i in ids] == payloads
        assert {r["status"] for r in jobs(db, config)} == {"available"}

    def test_defer_many_accepts_a_generator(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """defer_many takes any iterable of payloads, a generator included."""
        handles = plain(config).defer_many({"i": i} for i in range(3))
        assert [job(db, config, h.id)["payload"] for h in handles] == [{"i": 0}, {"i": 1}, {"i": 2}]

    def test_defer_many_with_one_invalid_payload_writes_nothing(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A batch with one payload of the wrong type raises PayloadError and writes no job."""
        definition: JobDefinition[Any] = JobDefinition(
            config, name="order", job_function=noop, payload_type=Order
        )
        good = Order(uuid.uuid4(), dt.datetime.now(dt.UTC), 1)
        with pytest.raises(PayloadError):
            definition.defer_many([good, {"amount": 2}, good])
        assert count(db, config) == 0

    def test_defer_many_single_dict_rejected(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """A single dict passed as the batch is refused rather than iterated over its keys."""
        with pytest.raises(ConfigurationError):
            plain(config).defer_many(cast(Any, {"a": 1, "b": 2}))
        assert count(db, config) == 0

    def test_defer_many_empty_runs_no_sql(self, test_dsn: str, schema: str) -> None:
        """defer_many([]) returns [] without touching the database (the DSN here is unreachable)."""
        unreachable = Config(
            "postgresql://postgres@127.0.0.1:1/nothing", schema=schema, connect_attempts=1
        )
        definition = plain(unreachable)
        assert definition.defer_many([]) == []
        assert definition.defer_many(iter([])) == []
        assert asyncio.run(definition.defer_many_async([])) == []
        unreachable.close()


class TestNotify:
    def test_defer_many_sends_one_notify_for_the_batch(
        self, config: Config, db: psycopg.Connection[Any], listener: psycopg.Connection[Any]
    ) -> None:
        """defer_many of 50 jobs wakes the workers with one NOTIFY whose payload is the channel."""
        definition = plain(config, channel="reports")
        assert len(definition.defer_many([{"i": i} for i in range(50)])) == 50
        assert notifications(listener, db, config) == ["reports"]

    def test_single_defers_in_one_transaction_send_one_notify(
        self,
        config: Config,
        test_dsn: str,
        db: psycopg.Connection[Any],
        listener: psycopg.Connection[Any],
    ) -> None:
        """Ten defers inside one transaction with conn= deliver one NOTIFY on commit."""
        definition = plain(config, channel="reports")
        definition.defer({"warm": True})
        assert notifications(listener, db, config) == ["reports"]
        with psycopg.connect(test_dsn, autocommit=True) as conn, conn.transaction():
            for i in range(10):
                definition.defer({"i": i}, conn=conn)
        assert notifications(listener, db, config) == ["reports"]
        assert count(db, config) == 11

    def test_rolled_back_defer_sends_no_notify(
        self,
        config: Config,
        test_dsn: str,
        db: psycopg.Connection[Any],
        listener: psycopg.Connection[Any],
    ) -> None:
        """A defer in a rolled-back transaction wakes nobody."""
        definition = plain(config)
        with (
            psycopg.connect(test_dsn, autocommit=True) as conn,
            conn.transaction(force_rollback=True),
        ):
            definition.defer({"n": 1}, conn=conn)
            definition.defer_many([{"n": 2}], conn=conn)
        assert notifications(listener, db, config) == []

    def test_separate_defers_notify_once_each(
        self, config: Config, db: psycopg.Connection[Any], listener: psycopg.Connection[Any]
    ) -> None:
        """Three defers in their own transactions deliver three notifies, one per channel used."""
        plain(config, "a", channel="one").defer({"n": 1})
        plain(config, "b", channel="two").defer({"n": 2})
        plain(config, "a2", channel="one").defer({"n": 3})
        assert notifications(listener, db, config) == ["one", "two", "one"]


class TestPayloadRejection:
    @pytest.mark.parametrize(
        ("payload_type", "payload"),
        [
            (None, object()),
            (None, {"value": float("nan")}),
            (None, {"text": "nul\x00byte"}),
            (Order, {"order_id": "x", "placed_at": "2024-01-01T00:00:00+00:00", "amount": 1}),
            (Ping, ("db1", 1)),
            (Point, {"x": 1}),
            (Point, {"x": "not a number", "y": 2}),
        ],
        ids=[
            "object",
            "nan",
            "nul",
            "attrs-wrong-type",
            "dataclass-wrong-type",
            "typeddict-missing-key",
            "typeddict-bad-value",
        ],
    )
    @pytest.mark.parametrize("method", ["defer", "defer_many", "defer_async"])
    def test_bad_payload_raises_payload_error_and_writes_nothing(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        payload_type: Any,
        payload: Any,
        method: str,
    ) -> None:
        """A payload that is not JSON or does not fit the payload type raises PayloadError; nothing is written."""
        definition: JobDefinition[Any] = JobDefinition(
            config, name="typed", job_function=noop, payload_type=payload_type
        )
        with pytest.raises(PayloadError) as info:
            if method == "defer":
                definition.defer(payload)
            elif method == "defer_many":
                definition.defer_many([payload])
            else:
                asyncio.run(definition.defer_async(payload))
        assert info.value.definition == "typed"
        assert count(db, config) == 0

    def test_oversized_payload_rejected(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """A payload over max_payload_bytes raises PayloadError and writes nothing; one under it is stored."""
        with Config(test_dsn, schema=config.schema, max_payload_bytes=1000) as small:
            definition = plain(small)
            with pytest.raises(PayloadError, match="1000"):
                definition.defer({"blob": "x" * 2000})
            with pytest.raises(PayloadError):
                definition.defer_many([{"ok": 1}, {"blob": "x" * 2000}])
            assert count(db, config) == 0
            handle = definition.defer({"blob": "x" * 900})
        assert job(db, config, handle.id)["payload"] == {"blob": "x" * 900}


class TestPriority:
    def test_priority_default_and_override_stored(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """Jobs carry the definition's priority unless defer or defer_many overrides it."""
        definition = plain(config, priority=5)
        default = definition.defer({"n": 1})
        override = definition.defer({"n": 2}, priority=-7)
        batch = definition.defer_many([{"n": 3}, {"n": 4}], priority=100)
        priorities = {r["id"]: r["priority"] for r in jobs(db, config)}
        assert priorities[default.id] == 5
        assert priorities[override.id] == -7
        assert [priorities[h.id] for h in batch] == [100, 100]

    @pytest.mark.parametrize("priority", [101, -101, True, "high"])
    def test_priority_out_of_range_rejected(
        self, config: Config, db: psycopg.Connection[Any], priority: Any
    ) -> None:
        """A priority outside -100..100 or not an int raises ConfigurationError and writes nothing."""
        with pytest.raises(ConfigurationError):
            plain(config).defer({"n": 1}, priority=priority)
        assert count(db, config) == 0


class TestAsync:
    def test_defer_async_and_defer_many_async_write_jobs(
        self, config: Config, db: psycopg.Connection[Any]
    ) -> None:
        """defer_async and defer_many_async write available jobs and return their handles in order."""
        definition = plain(config)

        async def defer_all() -> list[JobHandle]:
            try:
                one = await definition.defer_async({"n": 0}, priority=9)
                many = await definition.defer_many_async([{"n": 1}, {"n": 2}])
                return [one, *many]
            finally:
                await config.close_async()

        handles = asyncio.run(defer_all())
        rows = jobs(db, config)
        assert [r["id"] for r in rows] == [h.id for h in handles]
        assert [r["payload"] for r in rows] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert [r["priority"] for r in rows] == [9, 0, 0]
        assert {r["status"] for r in rows} == {"available"}

    def test_async_conn_in_rolled_back_transaction_writes_nothing(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """defer_async and defer_many_async with an AsyncConnection whose transaction rolls back leave no row."""
        definition = plain(config)

        async def defer_and_roll_back() -> int:
            try:
                async with (
                    await psycopg.AsyncConnection.connect(test_dsn, autocommit=True) as conn,
                    conn.transaction(force_rollback=True),
                ):
                    await definition.defer_async({"n": 1}, conn=conn)
                    await definition.defer_many_async([{"n": 2}, {"n": 3}], conn=conn)
                    query = sql.SQL("SELECT count(*) FROM {}").format(
                        sql.Identifier(config.schema, "job")
                    )
                    row = await (await conn.execute(query)).fetchone()
                    assert row is not None
                    return int(row[0])
            finally:
                await config.close_async()

        assert asyncio.run(defer_and_roll_back()) == 3
        assert count(db, config) == 0

    def test_async_conn_in_committed_transaction_writes_jobs(
        self, config: Config, test_dsn: str, db: psycopg.Connection[Any]
    ) -> None:
        """defer_async with an AsyncConnection whose transaction commits writes the job."""
        definition = plain(config)

        async def defer_and_commit() -> JobHandle:
            try:
                async with (
                    await psycopg.AsyncConnection.connect(test_dsn, autocommit=True) as conn,
                    conn.transaction(),
                ):
                    return await definition.defer_async({"n": 1}, conn=conn)
            finally:
                await config.close_async()

        handle = asyncio.run(defer_and_commit())
        assert job(db, config, handle.id)["payload"] == {"n": 1}


class TestJobHandle:
    def test_status_of_a_new_job_is_available(self, config: Config) -> None:
        """JobHandle.status() of a freshly deferred job is 'available', also from a rebuilt handle."""
        handle = plain(config).defer({"n": 1})
        assert handle.status() == "available"
        rebuilt = JobHandle(handle.id, config)
        assert rebuilt == handle
        assert rebuilt.status() == "available"

    def test_status_of_a_missing_job_raises(self, config: Config) -> None:
        """JobHandle.status() for an id that does not exist raises UnknownJobError."""
        with pytest.raises(UnknownJobError) as info:
            JobHandle(999999, config).status()
        assert info.value.job_ids == (999999,)
