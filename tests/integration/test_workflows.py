"""Workflows: dependency results, groups, chords and chains, and the graph around a job.

Jobs run through ``orchestra.testing`` (the worker's own attempt and finish
code, in the test's thread) or a Worker in a thread; a failed member's
dependents are failed by the orchestrator's finalizer, run once by hand.
Child processes are tested in ``tests/e2e/test_workflow_children.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import psycopg
import pytest

from orchestra import (
    Config,
    ConfigurationError,
    DependencyResultError,
    JobContext,
    JobDefinition,
    JobFailed,
    JobHandle,
    OrchestraError,
    PayloadError,
    UnknownJobError,
    Worker,
    chain,
    chain_async,
    chord,
    chord_async,
    group,
    group_async,
)
from orchestra._orchestrator._finalizer import Finalizer
from orchestra.testing import DrainResult, drain, drain_async, inline
from tests._running import running


@attrs.frozen
class Total:
    """What ``total`` returns, and what callbacks read back with ``as_type``."""

    ids: list[int]
    total: int


def square(payload: dict[str, int]) -> int:
    return payload["n"] ** 2


def fail(payload: dict[str, int]) -> int:
    raise ValueError(f"no square for {payload['n']}")


def total(payload: Any, ctx: JobContext) -> Total:
    results = ctx.dependency_results()
    return Total(ids=list(results), total=sum(results.values()))


async def total_async(payload: Any, ctx: JobContext) -> Total:
    results = await ctx.dependency_results_async()
    return Total(ids=list(results), total=sum(results.values()))


def add_one(payload: Any, ctx: JobContext) -> int:
    """A chain step: the step before's result, plus one (or 1 for the first step)."""
    results: dict[int, int] = ctx.dependency_results()
    return sum(results.values()) + 1


def rows(db: psycopg.Connection[Any], config: Config, sql: str, *args: Any) -> list[Any]:
    return db.execute(sql.replace("{s}", f'"{config.schema}"'), args).fetchall()


def count_jobs(db: psycopg.Connection[Any], config: Config) -> int:
    return int(rows(db, config, "SELECT count(*) FROM {s}.all_jobs")[0][0])


@pytest.fixture
def squares(config: Config) -> JobDefinition[Any]:
    return JobDefinition(config, name="square", job_function=square)


@pytest.fixture
def totals(config: Config) -> JobDefinition[Any]:
    return JobDefinition(config, name="total", job_function=total)


# -- ctx.dependency_results ----------------------------------------------------------


class TestDependencyResults:
    def test_a_def_job_reads_its_dependencies_results_by_id(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """{dependency id: result}, in id order, decoded from JSON."""
        members = [squares.defer({"n": n}) for n in (3, 1, 2)]
        callback = totals.defer({}, depends_on=reversed(members))
        assert drain(config) == DrainResult(succeeded=4)
        assert callback.result(timeout=0) == {"ids": [m.id for m in members], "total": 14}

    def test_an_async_job_reads_them_with_the_async_twin(
        self, config: Config, squares: JobDefinition[Any]
    ) -> None:
        """dependency_results_async in an async def job, run on the caller's loop."""
        callback_definition = JobDefinition(config, name="total-async", job_function=total_async)
        members = [squares.defer({"n": n}) for n in (2, 4)]
        callback = callback_definition.defer({}, depends_on=members)

        async def main() -> DrainResult:
            return await drain_async(config)

        assert asyncio.run(main()) == DrainResult(succeeded=3)
        assert callback.result(timeout=0) == {"ids": [m.id for m in members], "total": 20}

    def test_results_are_read_in_a_worker_by_def_and_async_jobs(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """A real Worker: the job-thread and the event-loop paths both read them."""
        async_totals = JobDefinition(config, name="total-async", job_function=total_async)
        members = [squares.defer({"n": n}) for n in (1, 2, 3)]
        by_thread = totals.defer({}, depends_on=members)
        on_loop = async_totals.defer({}, depends_on=members)
        with running(Worker(config, concurrency=4, process_interval_ms=50)):
            assert by_thread.result(timeout=30) == {"ids": [m.id for m in members], "total": 14}
            assert on_loop.result(timeout=30) == {"ids": [m.id for m in members], "total": 14}

    def test_results_structure_into_as_type(self, config: Config) -> None:
        """as_type structures each result, as JobHandle.result does."""
        seen: list[dict[int, Total]] = []

        def read_typed(payload: Any, ctx: JobContext) -> None:
            seen.append(ctx.dependency_results(as_type=Total))

        make = JobDefinition(config, name="make", job_function=lambda p: Total([1], p["n"]))
        read = JobDefinition(config, name="read", job_function=read_typed)
        first, second = make.defer({"n": 5}), make.defer({"n": 6})
        read.defer({}, depends_on=[first, second])
        assert drain(config) == DrainResult(succeeded=3)
        assert seen == [{first.id: Total([1], 5), second.id: Total([1], 6)}]

    def test_a_result_that_does_not_fit_as_type_fails_the_job_with_payload_error(
        self, config: Config, squares: JobDefinition[Any]
    ) -> None:
        """A PayloadError names the dependency whose result does not fit."""
        raised: list[BaseException] = []

        def read_typed(payload: Any, ctx: JobContext) -> None:
            try:
                ctx.dependency_results(as_type=Total)
            except PayloadError as exc:
                raised.append(exc)
                raise

        member = squares.defer({"n": 2})
        JobDefinition(config, name="read", job_function=read_typed).defer({}, depends_on=[member])
        result = drain(config)
        assert (result.succeeded, result.failed) == (1, 1)
        assert f"job {member.id}" in str(raised[0])

    def test_a_job_without_dependencies_reads_an_empty_dict(self, config: Config) -> None:
        """No dependencies: {} (one empty read)."""
        alone = JobDefinition(
            config, name="alone", job_function=lambda p, ctx: ctx.dependency_results()
        )
        handle = alone.defer({})
        drain(config)
        assert handle.result(timeout=0) == {}

    def test_a_dependency_the_history_no_longer_keeps_is_named_in_the_error(
        self, config: Config, db: psycopg.Connection[Any], squares: JobDefinition[Any]
    ) -> None:
        """A dependency dropped by the retention after the release: DependencyResultError
        naming its id and why; the job's other dependencies do not hide it."""
        raised: list[DependencyResultError] = []

        def read(payload: Any, ctx: JobContext) -> None:
            try:
                ctx.dependency_results()
            except DependencyResultError as exc:
                raised.append(exc)
                raise

        kept, dropped = squares.defer({"n": 1}), squares.defer({"n": 2})
        reader = JobDefinition(config, name="reader", job_function=read)
        handle = reader.defer({}, depends_on=[kept, dropped])
        drain(config, definitions=[squares])
        assert handle.status() == "available"
        # What the orchestrator's retention does to an old history partition.
        rows(db, config, "DELETE FROM {s}.job_history WHERE id = %s RETURNING id", dropped.id)
        result = drain(config)
        assert result.failed == 1
        (error,) = raised
        assert error.job_id == handle.id
        assert error.job_ids == (dropped.id,)
        assert isinstance(error, LookupError)
        assert f"job {dropped.id} is no longer kept by the history" in str(error)
        assert "finalized_job_threshold_ms" in str(error)
        with pytest.raises(JobFailed, match=f"DependencyResultError: job {handle.id} cannot"):
            handle.result(timeout=0)

    def test_a_dependency_retried_after_the_release_is_named_with_its_status(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """Retried by an operator once its dependent was released: no result to give."""
        member = squares.defer({"n": 3})
        callback = totals.defer({}, depends_on=[member])
        drain(config, definitions=[squares])
        config.jobs.retry(member)
        result = drain(config, definitions=[totals])
        assert result.failed == 1
        assert f"job {member.id} is available: it was retried" in result.errors[0]
        with pytest.raises(JobFailed):
            callback.result(timeout=0)


# -- group, chord, chain ----------------------------------------------------------------


class TestChord:
    def test_a_chord_runs_its_callback_on_every_members_result(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        squares: JobDefinition[Any],
        totals: JobDefinition[Any],
    ) -> None:
        """Members and callback in one go; the callback waits, then reads all results."""
        workflow = chord([squares.job({"n": n}) for n in range(1, 5)], then=totals.job({}))
        assert workflow.kind == "chord"
        assert len(workflow.jobs) == 4
        assert workflow.callback is not None
        assert workflow.last == workflow.callback
        assert workflow.handles == (*workflow.jobs, workflow.callback)
        assert workflow.callback.status() == "waiting"
        assert config.jobs.get(workflow.callback).depends_on == tuple(j.id for j in workflow.jobs)
        assert drain(config) == DrainResult(succeeded=5)
        assert workflow.result(timeout=0) == {"ids": [j.id for j in workflow.jobs], "total": 30}
        assert workflow.result(timeout=0, as_type=Total) == Total([j.id for j in workflow.jobs], 30)

    def test_a_failed_member_fails_the_callback_and_its_dependents(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        squares: JobDefinition[Any],
        totals: JobDefinition[Any],
    ) -> None:
        """Celery's rule: a member that fails for good fails the chord; the callback never
        runs on partial results, and its own dependents fail with it."""
        failing = JobDefinition(config, name="fail", job_function=fail)
        workflow = chord([squares.job({"n": 1}), failing.job({"n": 2})], then=totals.job({}))
        assert workflow.callback is not None
        after = totals.defer({}, depends_on=[workflow.callback])
        result = drain(config)
        assert (result.succeeded, result.failed, result.waiting) == (1, 1, 2)
        Finalizer(config, interval_ms=5_000).run_once(db, None)
        with pytest.raises(JobFailed, match="unmet_dependencies") as failed:
            workflow.result(timeout=0)
        assert failed.value.job_id == workflow.callback.id
        with pytest.raises(JobFailed, match="unmet_dependencies"):
            after.result(timeout=0)
        assert drain(config) == DrainResult()

    def test_members_and_callback_are_one_transaction(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        squares: JobDefinition[Any],
        totals: JobDefinition[Any],
    ) -> None:
        """A statement that fails after the members were inserted takes them back: in the
        caller's transaction the chord is a savepoint, and the transaction goes on."""
        squares.defer({"n": 0})  # writes the definition rows
        totals.defer({})
        before = count_jobs(db, config)
        # The callback's definition row vanished after this process wrote it.
        rows(db, config, "DELETE FROM {s}.job_definition WHERE name = 'total' RETURNING name")
        with config.connect() as conn, conn.transaction():
            with pytest.raises(OrchestraError, match="definition 'total' is missing"):
                chord([squares.job({"n": n}) for n in range(3)], then=totals.job({}), conn=conn)
            kept = squares.defer({"n": 9}, conn=conn)
        assert count_jobs(db, config) == before + 1
        assert kept.status() == "available"

    def test_a_definition_row_swept_meanwhile_is_written_again(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        squares: JobDefinition[Any],
        totals: JobDefinition[Any],
    ) -> None:
        """On orchestra's own connection, the chord is run again after writing the row, as
        defer does: the first try left nothing behind."""
        squares.defer({"n": 0})
        totals.defer({})
        before = count_jobs(db, config)
        rows(db, config, "DELETE FROM {s}.job_definition WHERE name = 'total' RETURNING name")
        workflow = chord([squares.job({"n": n}) for n in range(3)], then=totals.job({}))
        assert count_jobs(db, config) == before + 4
        assert rows(db, config, "SELECT name FROM {s}.job_definition WHERE name = 'total'") == [
            ("total",)
        ]
        assert workflow.callback is not None
        assert workflow.callback.status() == "waiting"

    def test_in_the_callers_transaction_a_rollback_takes_the_whole_chord(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        squares: JobDefinition[Any],
        totals: JobDefinition[Any],
    ) -> None:
        """With conn=, the chord commits or rolls back with the caller's transaction."""
        with config.connect() as conn:
            with conn.transaction():
                chord([squares.job({"n": 1})], then=totals.job({}), conn=conn)
                assert count_jobs(db, config) == 0  # not committed yet
                raise_rollback(conn)
            assert count_jobs(db, config) == 0
            with conn.transaction():
                kept = chord([squares.job({"n": 1})], then=totals.job({}), conn=conn)
        assert drain(config) == DrainResult(succeeded=2)
        assert kept.result(timeout=0)["total"] == 1

    def test_a_member_whose_unique_key_is_held_joins_the_chord_as_the_holder(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """The holder's handle comes back deduplicated; the callback waits for it."""
        holder = squares.defer({"n": 7}, unique_key="seven")
        workflow = chord(
            [squares.job({"n": 7}, unique_key="seven"), squares.job({"n": 1})],
            then=totals.job({}),
        )
        assert workflow.jobs[0] == holder
        assert workflow.jobs[0].deduplicated
        assert drain(config) == DrainResult(succeeded=3)
        assert workflow.result(timeout=0) == {
            "ids": [holder.id, workflow.jobs[1].id],
            "total": 50,
        }

    def test_a_chord_runs_at_once_in_inline_mode(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """orchestra.testing.inline runs the members, then the callback, before chord returns."""
        with inline(config):
            workflow = chord([squares.job({"n": 2}), squares.job({"n": 3})], then=totals.job({}))
            assert workflow.result(timeout=0)["total"] == 13

    def test_chord_async_and_its_result(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """The async twins defer the same chord and wait for its result."""

        async def main() -> Any:
            workflow = await chord_async([squares.job({"n": 5})], then=totals.job({}))
            await drain_async(config)
            return await workflow.result_async(timeout=0)

        assert asyncio.run(main())["total"] == 25

    def test_a_worker_runs_a_chord_of_many_members(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """Fan-out and fan-in with concurrent workers: the callback starts after the last member."""
        workflow = chord([squares.job({"n": n}) for n in range(100)], then=totals.job({}))
        with running(Worker(config, concurrency=8, process_interval_ms=50)):
            value = workflow.result(timeout=60)
        assert value["total"] == sum(n * n for n in range(100))
        assert value["ids"] == [j.id for j in workflow.jobs]


class TestChainAndGroup:
    def test_a_chain_passes_each_result_to_the_next_step(self, config: Config) -> None:
        """Each step depends on the one before and reads its result; the chain's result is
        the last step's."""
        step = JobDefinition(config, name="add-one", job_function=add_one)
        workflow = chain([step.job({}) for _ in range(4)])
        assert workflow.kind == "chain"
        assert workflow.callback is None
        assert workflow.last == workflow.jobs[-1]
        deps = [config.jobs.get(h).depends_on for h in workflow.jobs]
        assert deps == [(), *((h.id,) for h in workflow.jobs[:-1])]
        assert drain(config) == DrainResult(succeeded=4)
        assert workflow.result(timeout=0) == 4

    def test_a_failing_step_stops_the_chain(
        self, config: Config, db: psycopg.Connection[Any], squares: JobDefinition[Any]
    ) -> None:
        """The steps after a failure fail with unmet_dependencies once the finalizer runs."""
        failing = JobDefinition(config, name="fail", job_function=fail)
        step = JobDefinition(config, name="add-one", job_function=add_one)
        workflow = chain([squares.job({"n": 2}), failing.job({"n": 3}), step.job({})])
        result = drain(config)
        assert (result.succeeded, result.failed, result.waiting) == (1, 1, 1)
        Finalizer(config, interval_ms=5_000).run_once(db, None)
        with pytest.raises(JobFailed, match="unmet_dependencies"):
            workflow.result(timeout=0)

    def test_a_group_result_is_every_jobs_result_in_order(
        self, config: Config, squares: JobDefinition[Any]
    ) -> None:
        """A group is independent jobs in one transaction; its result is the list of theirs."""
        workflow = group([squares.job({"n": n}, priority=n) for n in (1, 2, 3)])
        assert workflow.kind == "group"
        assert workflow.last is None
        assert all(config.jobs.get(h).depends_on == () for h in workflow.jobs)
        assert drain(config) == DrainResult(succeeded=3)
        assert workflow.result(timeout=0) == [1, 4, 9]

    def test_group_async_and_chain_async(self, config: Config, squares: JobDefinition[Any]) -> None:
        """The async twins."""
        step = JobDefinition(config, name="add-one", job_function=add_one)

        async def main() -> tuple[Any, Any]:
            fan = await group_async([squares.job({"n": 4})])
            line = await chain_async([step.job({}), step.job({})])
            await drain_async(config)
            return await fan.result_async(timeout=0), await line.result_async(timeout=0)

        assert asyncio.run(main()) == ([16], 2)

    def test_a_jobs_options_are_kept(self, config: Config, squares: JobDefinition[Any]) -> None:
        """definition.job takes defer's options: priority, delay, keys, tags."""
        workflow = group([squares.job({"n": 1}, priority=7, resource_key="k", tags=["wf"])])
        job = config.jobs.get(workflow.jobs[0])
        assert (job.priority, job.resource_key, job.tags) == (7, "k", ("wf",))


class TestBadInput:
    @pytest.mark.parametrize("shape", ["group", "chord", "chain"])
    def test_an_empty_workflow_is_one_clear_error_and_writes_nothing(
        self,
        shape: str,
        config: Config,
        db: psycopg.Connection[Any],
        totals: JobDefinition[Any],
    ) -> None:
        """ConfigurationError on 'jobs', before anything is written (not even a definition)."""
        with pytest.raises(ConfigurationError) as raised:
            if shape == "chord":
                chord([], then=totals.job({}))
            elif shape == "group":
                group([])
            else:
                chain([])
        assert str(raised.value) == f"jobs: a {shape} needs at least one job; nothing was deferred"
        assert count_jobs(db, config) == 0
        assert rows(db, config, "SELECT count(*) FROM {s}.job_definition") == [(0,)]

    def test_what_is_not_a_job_is_refused(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """A payload, a definition or a handle in place of a job: one line naming it."""
        with pytest.raises(ConfigurationError, match=r"^jobs: item 1 of the group is \{'n': 2\}"):
            group([squares.job({"n": 1}), {"n": 2}])  # type: ignore[list-item]
        with pytest.raises(ConfigurationError, match=r"^then: the chord's callback must be a job"):
            chord([squares.job({"n": 1})], then=totals)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"^jobs: a chain takes a list of jobs"):
            chain(squares.job({"n": 1}))  # type: ignore[arg-type]

    def test_a_bad_option_is_refused_when_the_job_is_made(
        self, squares: JobDefinition[Any]
    ) -> None:
        """definition.job checks as defer does, so no workflow starts with a bad job."""
        with pytest.raises(ConfigurationError, match=r"^priority"):
            squares.job({"n": 1}, priority=1000)

    def test_jobs_of_two_configs_are_refused(
        self, config: Config, test_dsn: str, squares: JobDefinition[Any]
    ) -> None:
        """Every job of a workflow belongs to one Config (one database, one schema)."""
        other = Config(test_dsn, schema=config.schema)
        try:
            stranger = JobDefinition(other, name="stranger", job_function=square)
            with pytest.raises(ConfigurationError, match="must belong to one Config"):
                group([squares.job({"n": 1}), stranger.job({"n": 2})])
        finally:
            other.close()

    def test_an_unknown_dependency_id_is_refused_by_defer(
        self, config: Config, db: psycopg.Connection[Any], totals: JobDefinition[Any]
    ) -> None:
        """depends_on with an id that does not exist: UnknownJobError, nothing inserted."""
        with pytest.raises(UnknownJobError, match="depends_on"):
            totals.defer({}, depends_on=[JobHandle(424242, config)])
        assert count_jobs(db, config) == 0


# -- the graph --------------------------------------------------------------------------


class TestGraph:
    def test_the_graph_of_a_chords_callback_and_of_a_member(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """Upstream: the members; downstream of a member: the callback and what follows it."""
        workflow = chord([squares.job({"n": n}) for n in (1, 2)], then=totals.job({}))
        assert workflow.callback is not None
        after = totals.defer({}, depends_on=[workflow.callback])
        first, second = workflow.jobs
        graph = config.jobs.graph(workflow.callback)
        assert [(n.id, n.side, n.depth, n.depends_on) for n in graph.nodes] == [
            (workflow.callback.id, "self", 0, (first.id, second.id)),
            (first.id, "upstream", -1, ()),
            (second.id, "upstream", -1, ()),
            (after.id, "downstream", 1, (workflow.callback.id,)),
        ]
        assert [(n.definition, n.status) for n in graph.nodes] == [
            ("total", "waiting"),
            ("square", "available"),
            ("square", "available"),
            ("total", "waiting"),
        ]
        assert not graph.truncated
        member = config.jobs.graph(first)
        assert [(n.id, n.side, n.depth) for n in member.nodes] == [
            (first.id, "self", 0),
            (workflow.callback.id, "downstream", 1),
            (after.id, "downstream", 2),
        ]
        assert member.edges == ((workflow.callback.id, first.id), (after.id, workflow.callback.id))

    def test_depth_follows_the_longest_path(self, config: Config) -> None:
        """A job that depends on a job and on its dependency stands right of both."""
        step = JobDefinition(config, name="step", job_function=square)
        a = step.defer({"n": 1})
        b = step.defer({"n": 2}, depends_on=[a])
        c = step.defer({"n": 3}, depends_on=[a, b])
        d = step.defer({"n": 4}, depends_on=[c, a])
        graph = config.jobs.graph(c)
        assert {n.id: n.depth for n in graph.nodes} == {c.id: 0, a.id: -2, b.id: -1, d.id: 1}
        top = config.jobs.graph(a)
        assert {n.id: n.depth for n in top.nodes} == {a.id: 0, b.id: 1, c.id: 2, d.id: 3}

    def test_a_finished_workflow_keeps_its_graph_with_statuses(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """Edges outlive the run: the graph of a finished chord shows every job succeeded."""
        workflow = chord([squares.job({"n": n}) for n in (1, 2)], then=totals.job({}))
        drain(config)
        assert workflow.callback is not None
        graph = config.jobs.graph(workflow.callback)
        assert {n.status for n in graph.nodes} == {"succeeded"}

    def test_a_large_fan_in_is_cut_at_the_limit_nearest_first(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """limit bounds each direction; truncated says so."""
        workflow = chord([squares.job({"n": n}) for n in range(12)], then=totals.job({}))
        assert workflow.callback is not None
        graph = config.jobs.graph(workflow.callback, limit=5)
        assert len(graph.upstream) == 5
        assert graph.upstream_truncated and graph.truncated
        assert not graph.downstream_truncated
        assert set(graph.nodes[0].depends_on) == {n.id for n in graph.upstream}
        exact = config.jobs.graph(workflow.callback, limit=12)
        assert len(exact.upstream) == 12
        assert not exact.truncated

    def test_a_dependency_no_longer_kept_has_no_definition_nor_status(
        self,
        config: Config,
        db: psycopg.Connection[Any],
        squares: JobDefinition[Any],
        totals: JobDefinition[Any],
    ) -> None:
        """An edge to a job the history dropped is kept; the job shows as gone."""
        member = squares.defer({"n": 1})
        callback = totals.defer({}, depends_on=[member])
        drain(config, definitions=[squares])
        rows(db, config, "DELETE FROM {s}.job_history WHERE id = %s RETURNING id", member.id)
        node = config.jobs.graph(callback).node(member.id)
        assert node is not None
        assert (node.definition, node.status, node.side) == (None, None, "upstream")

    def test_unknown_ids_and_bad_limits(self, config: Config) -> None:
        """UnknownJobError for an id in neither table; ConfigurationError for a bad limit."""
        with pytest.raises(UnknownJobError):
            config.jobs.graph(999_999)
        with pytest.raises(ConfigurationError, match=r"^limit"):
            config.jobs.graph(1, limit=0)

    def test_the_async_twin(
        self, config: Config, squares: JobDefinition[Any], totals: JobDefinition[Any]
    ) -> None:
        """config.jobs_async.graph reads the same graph."""
        workflow = chord([squares.job({"n": 1})], then=totals.job({}))
        assert workflow.callback is not None

        async def main() -> Any:
            return await config.jobs_async.graph(workflow.callback)  # type: ignore[arg-type]

        assert asyncio.run(main()) == config.jobs.graph(workflow.callback)


def raise_rollback(conn: psycopg.Connection[Any]) -> None:
    """Leave the current ``with conn.transaction()`` block by rolling it back."""
    raise psycopg.Rollback()
