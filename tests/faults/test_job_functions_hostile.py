"""Hostile job functions: whatever a job raises, returns or does to its own process,
its attempt ends failed, its neighbours run, and the worker carries on.

One case per way of running a job function, each with a real ``orchestra
daemon`` worker (:mod:`tests.faults._hostile_app`): ``def`` functions on job
threads, ``async def`` functions on the worker's event loop, and both in child
processes (``--processes 2``). Each hostile job raises one kind of
BaseException (KeyboardInterrupt, SystemExit with 0, 1 or a text, GeneratorExit,
a BaseException subclass of its own, a BaseExceptionGroup, an
asyncio.CancelledError of its own), an exception whose ``__str__`` (and
``__repr__``) raises, one with a 1 MB message or with NUL and control
characters; or it returns what cannot be stored (an object, 2 MB, NaN, a NUL,
a cycle, 10,000 levels of nesting); in a child it also leaves with
``os._exit``, SIGKILLs itself or segfaults. Every hostile job is followed by
well-behaved neighbours in the same channel, so claims mix them.

Afterwards:

* every hostile job is failed after all its attempts, and each attempt's
  error is bounded and names what went wrong;
* every neighbour succeeded exactly once (one attempt, one execution);
* the worker process still runs, exits 0 on SIGTERM, and its stop had
  nothing left to interrupt.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from orchestra import Config
from tests.e2e._support import DaemonFactory, Queue
from tests.faults import _hostile
from tests.faults._hostile_jobs import (
    CHILD_ONLY_KINDS,
    COMMON_KINDS,
    MARKER,
    define,
    hostile_channel,
)
from tests.faults._report import Report, Scale

#: Well-behaved jobs deferred after each hostile one (short battery; five in the full one).
NEIGHBOURS_PER_HOSTILE = 2
#: How long the jobs may take to be finalized: a bound on the wait, not a speed claim.
SETTLE_TIMEOUT_S = 150.0


def _kinds(mode: str) -> dict[str, dict[str, str]]:
    """Hostile definition -> {kind: what its errors must match}, for ``mode``."""
    if mode == "child":
        return {
            "hostile-child": {**COMMON_KINDS, **CHILD_ONLY_KINDS},
            "hostile-child-async": dict(COMMON_KINDS),
        }
    return {f"hostile-{mode}": dict(COMMON_KINDS)}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["thread", "async", "child"])
def test_hostile_job_functions_fail_alone_and_the_worker_carries_on(
    mode: str,
    config: Config,
    db: psycopg.Connection[Any],
    ledger: str,
    daemons: DaemonFactory,
    scale: Scale,
    report: Report,
) -> None:
    """Every hostile job fails after its attempts with a readable error; neighbours
    succeed once; the worker survives and stops cleanly."""
    queue = Queue(db, ledger)
    definitions = define(config)
    repeats = scale.pick(1, 4)
    expected: dict[int, str] = {}
    kinds_of: dict[int, str] = {}
    neighbours: list[int] = []
    serial = 0
    for _ in range(repeats):
        for name, kinds in _kinds(mode).items():
            for kind, pattern in kinds.items():
                handle = definitions[name].defer({"kind": kind})
                expected[handle.id], kinds_of[handle.id] = pattern, kind
                for _ in range(scale.pick(NEIGHBOURS_PER_HOSTILE, 5)):
                    serial += 1
                    neighbours.append(definitions[f"neighbour-{mode}"].defer({"n": serial}).id)
    ids = [*expected, *neighbours]

    worker = _hostile.start_worker(daemons, mode, hostile_channel(mode))
    why = _hostile.wait_finalized(queue, ids, worker, timeout=SETTLE_TIMEOUT_S * repeats)

    problems = [why] if why else []
    found = _hostile.states(queue, ids)
    for job_id, pattern in expected.items():
        state = found[job_id]
        label = f"[{kinds_of[job_id]}]"
        problems += [f"{label} {p}" for p in _hostile.finalized_problems(state)]
        problems += [f"{label} {p}" for p in _hostile.error_problems(state, pattern)]
        if kinds_of[job_id] in ("huge_message", "control_chars"):
            for attempt, _, error in state.attempts:
                if error is not None and error.count(MARKER) < 2:
                    problems.append(
                        f"{label} job {job_id} attempt {attempt}: the error lost an end "
                        f"of the message: {error!r:.200}"
                    )
    for job_id in neighbours:
        problems += _hostile.succeeded_once_problems(found[job_id])
    problems += _hostile.stop_cleanly(worker)
    snap, violations = _hostile.battery_checks(queue, ids)
    _hostile.record(
        report,
        snap,
        case=f"hostile-functions-{mode}",
        job_ids=ids,
        ran=ids,
        faults=len(expected),
        note=f"kinds={len(set(kinds_of.values()))}",
    )
    _hostile.fail_on(problems + violations, "\n--- worker log ---\n" + worker.log()[-6_000:])
