"""Job functions of workflows for Worker(processes=N) tests: module level, so spawn
children import them. Each reads its dependencies' results in the child process."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import attrs

from orchestra import DependencyResultError


@attrs.frozen
class Squared:
    """What ``square`` returns, and what ``total_typed`` reads back with ``as_type``."""

    n: int
    square: int


def square(payload: dict[str, int]) -> Squared:
    """A chord member."""
    return Squared(payload["n"], payload["n"] ** 2)


def total(payload: Any, ctx: Any) -> dict[str, Any]:
    """Sum the members' squares, read with ctx.dependency_results() in the child."""
    results = ctx.dependency_results()
    return {
        "pid": os.getpid(),
        "ids": list(results),
        "total": sum(r["square"] for r in results.values()),
    }


def total_typed(payload: Any, ctx: Any) -> dict[str, Any]:
    """The same, structured into Squared by the child (as_type is the child's type)."""
    results: dict[int, Squared] = ctx.dependency_results(as_type=Squared)
    return {"pid": os.getpid(), "total": sum(r.square for r in results.values())}


async def total_async(payload: Any, ctx: Any) -> dict[str, Any]:
    """An async def job in the child: the async twin."""
    first, second = await asyncio.gather(
        ctx.dependency_results_async(), ctx.dependency_results_async()
    )
    assert first == second
    return {"pid": os.getpid(), "total": sum(r["square"] for r in first.values())}


def missing(payload: Any, ctx: Any) -> dict[str, Any]:
    """Report the error a dependency no longer kept gives, as the child sees it."""
    try:
        ctx.dependency_results()
    except DependencyResultError as exc:
        return {"job_ids": list(exc.job_ids), "error": str(exc)}
    return {"job_ids": [], "error": None}
