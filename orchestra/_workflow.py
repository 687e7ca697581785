"""Workflows: a group, a chord or a chain of jobs, deferred in one transaction.

``depends_on`` already lets any job wait for others; these three functions
name the shapes people build with it, as Celery (``group``, ``chord``,
``chain``) and Oban or River workflows do, and defer every job of the shape in
one transaction, so that a workflow exists whole or not at all:

* :func:`group`: jobs that run independently; its result is all of theirs;
* :func:`chord`: a group, then a callback that depends on every job of it (a
  fan-out and its fan-in); its result is the callback's;
* :func:`chain`: jobs that run one after the other, each depending on the one
  before; its result is the last one's.

A job reads the results of the jobs it depends on with
``ctx.dependency_results()``. When a job of a chord or a chain fails for good
(or is cancelled), the jobs that depend on it fail with ``unmet_dependencies``,
as any dependent does: the orchestrator's finalizer cascades the failure
(decision 0007), so the chord's callback never runs on partial results.

Each job is a :class:`~orchestra.JobSpec`, made (and checked) by
``definition.job(payload, ...)``. Consecutive jobs of one definition with the
same options and no dependency go in one ``job_insert_many`` statement (a
chord's members, typically); every other job is one ``defer`` statement.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import psycopg

from orchestra import _defer, _ops, _results
from orchestra._definition import JobDefinition, JobSpec
from orchestra._jobs import JobHandle, ManagedDatabase
from orchestra._ops import Op
from orchestra.errors import ConfigurationError, OrchestraError

__all__ = [
    "Workflow",
    "chain",
    "chain_async",
    "chord",
    "chord_async",
    "group",
    "group_async",
]

#: The kinds of workflow, as :attr:`Workflow.kind` names them.
KINDS: tuple[str, ...] = ("group", "chord", "chain")

# Parameters that differ from one job to the next without keeping them out of
# one job_insert_many statement (the payload; the trace context, which the
# workflow sets once for all), or that keep them out (a unique key:
# job_insert_many takes none).
_PER_JOB = frozenset({"payload", "unique_key", "depends_on", "trace_context"})


@attrs.frozen
class Workflow:
    """The jobs a :func:`group`, :func:`chord` or :func:`chain` deferred.

    Attributes:
        kind: ``group``, ``chord`` or ``chain``.
        jobs: the handles of the jobs given, in their order: a group's jobs, a
            chord's members, a chain's steps. A job whose unique key was held
            is the holder's handle, with ``deduplicated`` set, as ``defer``
            returns it.
        callback: a chord's callback, which runs once every member
            succeeded; None for a group and a chain.
    """

    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    jobs: tuple[JobHandle, ...]
    callback: JobHandle | None = None

    @property
    def handles(self) -> tuple[JobHandle, ...]:
        """Every job of the workflow: :attr:`jobs`, then the callback if there is one."""
        return self.jobs if self.callback is None else (*self.jobs, self.callback)

    @property
    def last(self) -> JobHandle | None:
        """The job whose result is the workflow's: a chord's callback, a chain's last
        step; None for a group (its result is every job's)."""
        if self.kind == "chord":
            return self.callback
        if self.kind == "chain":
            return self.jobs[-1]
        return None

    def result(
        self,
        timeout: float | None = None,
        *,
        as_type: Any = None,
        poll_interval_s: float = _results.POLL_INTERVAL_S_DEFAULT,
    ) -> Any:
        """Wait for the workflow to finish and return its result.

        A chord's is its callback's result, a chain's its last step's, a
        group's the list of its jobs' results, in order. Arguments and errors
        as :meth:`JobHandle.result`, ``timeout`` for the whole wait: a chord
        whose member failed raises ``JobFailed`` for the callback once the
        orchestrator has failed it (``unmet_dependencies``), a group raises
        the first failure it meets.
        """
        _results.check_wait(timeout, poll_interval_s)
        last = self.last
        if last is not None:
            return last.result(timeout, as_type=as_type, poll_interval_s=poll_interval_s)
        deadline = None if timeout is None else time.monotonic() + timeout
        return [
            handle.result(_remaining(deadline), as_type=as_type, poll_interval_s=poll_interval_s)
            for handle in self.jobs
        ]

    async def result_async(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (as JobHandle.result_async)
        *,
        as_type: Any = None,
        poll_interval_s: float = _results.POLL_INTERVAL_S_DEFAULT,
    ) -> Any:
        """Async twin of :meth:`result`."""
        _results.check_wait(timeout, poll_interval_s)
        last = self.last
        if last is not None:
            return await last.result_async(
                timeout, as_type=as_type, poll_interval_s=poll_interval_s
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        return [
            await handle.result_async(
                _remaining(deadline), as_type=as_type, poll_interval_s=poll_interval_s
            )
            for handle in self.jobs
        ]


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# -- the plan: which job depends on which, checked before anything is written ----------


@attrs.frozen
class _Step:
    """One job of a workflow and the earlier steps it depends on (their indexes)."""

    spec: JobSpec
    after: tuple[int, ...] = ()


@attrs.frozen
class _Plan:
    kind: str
    config: ManagedDatabase
    steps: tuple[_Step, ...]

    @property
    def definitions(self) -> list[JobDefinition[Any]]:
        """The distinct definitions of the steps, in order of first use."""
        seen: dict[int, JobDefinition[Any]] = {}
        for step in self.steps:
            seen.setdefault(id(step.spec.definition), step.spec.definition)
        return list(seen.values())

    def workflow(self, handles: Sequence[JobHandle]) -> Workflow:
        if self.kind == "chord":
            return Workflow("chord", tuple(handles[:-1]), handles[-1])
        return Workflow(self.kind, tuple(handles))


def _specs(jobs: object, kind: str) -> list[JobSpec]:
    if isinstance(jobs, (str, bytes, JobSpec)) or not isinstance(jobs, Iterable):
        raise ConfigurationError(
            "jobs",
            f"a {kind} takes a list of jobs made by definition.job(payload), not {jobs!r}; "
            "nothing was deferred",
        )
    specs = list(jobs)
    for index, spec in enumerate(specs):
        if not isinstance(spec, JobSpec):
            raise ConfigurationError(
                "jobs",
                f"item {index} of the {kind} is {spec!r}, not a job made by "
                "definition.job(payload); nothing was deferred",
            )
    if not specs:
        raise ConfigurationError("jobs", f"a {kind} needs at least one job; nothing was deferred")
    return specs


def _plan(kind: str, jobs: object, then: object = None) -> _Plan:
    specs = _specs(jobs, kind)
    steps = [_Step(spec) for spec in specs]
    if kind == "chord":
        if not isinstance(then, JobSpec):
            raise ConfigurationError(
                "then",
                f"the chord's callback must be a job made by definition.job(payload), not "
                f"{then!r}; nothing was deferred",
            )
        steps.append(_Step(then, tuple(range(len(specs)))))
    elif kind == "chain":
        steps = [_Step(spec, () if i == 0 else (i - 1,)) for i, spec in enumerate(specs)]
    config = steps[0].spec.definition.config
    for step in steps:
        if step.spec.definition.config is not config:
            raise ConfigurationError(
                "jobs",
                f"every job of a {kind} must belong to one Config; "
                f"{step.spec.definition.name!r} belongs to another; nothing was deferred",
            )
    return _Plan(kind, config, tuple(steps))


# -- the insert, written once for both twins ----------------------------------------------


def _batch_length(steps: Sequence[_Step], start: int) -> int:
    """How many steps from ``start`` on can go in one job_insert_many statement."""
    first = steps[start]
    params = first.spec.params
    if first.after or params["unique_key"] is not None:
        return 1
    shared = {k: v for k, v in params.items() if k not in _PER_JOB}
    length = 1
    for step in steps[start + 1 :]:
        other = step.spec.params
        if (
            step.after
            or step.spec.definition is not first.spec.definition
            or other["unique_key"] is not None
            or {k: v for k, v in other.items() if k not in _PER_JOB} != shared
        ):
            break
        length += 1
    return length


def _insert(
    plan: _Plan,
) -> Op[tuple[list[JobHandle], list[tuple[JobDefinition[Any], int]]]]:
    """Insert every step, in order; the handles, and the waiting jobs to re-check.

    Runs inside one transaction. A job that depends on jobs of this
    transaction cannot miss their finish (they finish only after the
    commit, and see it then); one that depends on an earlier job (a step
    whose unique key was held) could, and is re-checked after the commit,
    as ``defer`` re-checks its own (decision 0007).
    """
    trace_context = _defer.current_trace_context()
    handles: list[JobHandle] = []
    recheck: list[tuple[JobDefinition[Any], int]] = []
    index = 0
    while index < len(plan.steps):
        step = plan.steps[index]
        definition = step.spec.definition
        length = _batch_length(plan.steps, index)
        params = step.spec.params
        params["trace_context"] = trace_context
        if length > 1:
            params["payloads"] = [
                s.spec.params["payload"] for s in plan.steps[index : index + length]
            ]
            handles += yield from _defer.insert_many(definition, params, own=False)
            index += length
            continue
        needed = [handles[i] for i in step.after]
        params["depends_on"] = list(dict.fromkeys(h.id for h in needed))
        handle = yield from _defer.insert_one(definition, params, own=False)
        if any(h.deduplicated for h in needed) and not handle.deduplicated:
            recheck.append((definition, handle.id))
        handles.append(handle)
        index += 1
    return handles, recheck


def _recheck(recheck: list[tuple[JobDefinition[Any], int]]) -> Op[None]:
    for definition, job_id in recheck:
        yield from _defer._recheck_waiting(definition, (job_id,))


def _runs(
    plan: _Plan, handles: Sequence[JobHandle]
) -> list[tuple[JobDefinition[Any], list[JobHandle]]]:
    """The handles by runs of consecutive steps of one definition (for the defer hooks)."""
    runs: list[tuple[JobDefinition[Any], list[JobHandle]]] = []
    for step, handle in zip(plan.steps, handles, strict=True):
        if runs and runs[-1][0] is step.spec.definition:
            runs[-1][1].append(handle)
        else:
            runs.append((step.spec.definition, [handle]))
    return runs


def _rewrite_forgotten(plan: _Plan, error: OrchestraError, tries: int) -> Op[None]:
    """After a try that failed: write again the definition rows found missing, or re-raise.

    An insert that finds its definition's row missing (swept as stale, or
    deleted) makes the definition forget it wrote it, and raises; on
    orchestra's own connection the whole workflow then runs again once, after
    writing the rows, as ``defer`` does for one job. Its failed try was
    rolled back whole.
    """
    forgotten = [d for d in plan.definitions if d._needs_ensure()]
    if tries > 1 or not forgotten:
        raise error
    for definition in forgotten:
        yield from definition._ensure_op()


def _defer_plan(plan: _Plan, conn: psycopg.Connection[Any] | None) -> Workflow:
    for definition in plan.definitions:
        definition._ensure()
    queries = plan.config.queries
    if conn is not None:
        with conn.transaction():
            handles, _ = _ops.run(conn, queries, _insert(plan))
        # In the caller's transaction: a dependency that finishes before its
        # commit is the finalizer's catch-up (as with defer(conn=...)).
    else:
        with plan.config.connection() as own:
            tries = 0
            while True:
                tries += 1
                try:
                    with own.transaction():
                        handles, recheck = _ops.run(own, queries, _insert(plan))
                    break
                except OrchestraError as error:
                    _ops.run(own, queries, _rewrite_forgotten(plan, error, tries))
            if recheck:
                _ops.run(own, queries, _recheck(recheck))
    hooks = _defer.defer_hooks.get()
    if hooks:  # orchestra.testing.inline: run the jobs now
        for definition, run in _runs(plan, handles):
            for hook in hooks:
                hook._after_defer(definition, run, conn)
    return plan.workflow(handles)


async def _defer_plan_async(plan: _Plan, conn: psycopg.AsyncConnection[Any] | None) -> Workflow:
    for definition in plan.definitions:
        await definition._ensure_async()
    queries = plan.config.queries
    if conn is not None:
        async with conn.transaction():
            handles, _ = await _ops.run_async(conn, queries, _insert(plan))
    else:
        async with plan.config.connection_async() as own:
            tries = 0
            while True:
                tries += 1
                try:
                    async with own.transaction():
                        handles, recheck = await _ops.run_async(own, queries, _insert(plan))
                    break
                except OrchestraError as error:
                    await _ops.run_async(own, queries, _rewrite_forgotten(plan, error, tries))
            if recheck:
                await _ops.run_async(own, queries, _recheck(recheck))
    hooks = _defer.defer_hooks.get()
    if hooks:
        for definition, run in _runs(plan, handles):
            for hook in hooks:
                await hook._after_defer_async(definition, run, conn)
    return plan.workflow(handles)


# -- the public functions -------------------------------------------------------------------


def group(jobs: Iterable[JobSpec], *, conn: psycopg.Connection[Any] | None = None) -> Workflow:
    """Defer independent jobs in one transaction: all of them or, on any error, none.

    ``jobs``: made by ``definition.job(payload, ...)``, of any definitions of
    one Config. With ``conn``, in that connection's transaction (a savepoint
    of it), as ``defer(conn=...)``. The workflow's :meth:`~Workflow.result`
    is the list of their results. An empty list, or anything but jobs,
    raises :class:`~orchestra.ConfigurationError` and writes nothing.
    """
    return _defer_plan(_plan("group", jobs), conn)


def chord(
    jobs: Iterable[JobSpec], then: JobSpec, *, conn: psycopg.Connection[Any] | None = None
) -> Workflow:
    """Defer a group of jobs and a callback that runs once they all succeeded (fan-out, fan-in).

    In one transaction. The callback reads the members' results with
    ``ctx.dependency_results()`` (by member id, in id order, which is the
    order of ``jobs``). If a member fails for good or is cancelled, the
    callback does not run: it fails with ``unmet_dependencies`` (the
    orchestrator's finalizer does it, within ``finalize_interval_ms``), and so
    do the jobs that depend on it. :meth:`Workflow.result` is the callback's
    result. An empty chord raises :class:`~orchestra.ConfigurationError` and
    writes nothing.
    """
    return _defer_plan(_plan("chord", jobs, then), conn)


def chain(jobs: Iterable[JobSpec], *, conn: psycopg.Connection[Any] | None = None) -> Workflow:
    """Defer jobs that run one after the other: each depends on the one before.

    In one transaction. Each step reads the one before's result with
    ``ctx.dependency_results()`` (one entry); a step that fails for good stops
    the chain (the steps after it fail with ``unmet_dependencies``).
    :meth:`Workflow.result` is the last step's result.
    """
    return _defer_plan(_plan("chain", jobs), conn)


async def group_async(
    jobs: Iterable[JobSpec], *, conn: psycopg.AsyncConnection[Any] | None = None
) -> Workflow:
    """Async twin of :func:`group`."""
    return await _defer_plan_async(_plan("group", jobs), conn)


async def chord_async(
    jobs: Iterable[JobSpec], then: JobSpec, *, conn: psycopg.AsyncConnection[Any] | None = None
) -> Workflow:
    """Async twin of :func:`chord`."""
    return await _defer_plan_async(_plan("chord", jobs, then), conn)


async def chain_async(
    jobs: Iterable[JobSpec], *, conn: psycopg.AsyncConnection[Any] | None = None
) -> Workflow:
    """Async twin of :func:`chain`."""
    return await _defer_plan_async(_plan("chain", jobs), conn)
