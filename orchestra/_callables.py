"""How orchestra calls a job function: which arguments it takes, and whether it is async.

A job function takes ``(payload, ctx)``, ``(payload)`` or nothing; it is
inspected once, when its definition is made, and called with exactly the
arguments it requires.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from orchestra.errors import ConfigurationError


def arity(function: object) -> int:
    """How many of ``(payload, ctx)`` ``function`` takes: 0, 1 or 2.

    Raises ConfigurationError if it is not callable, or if no such call can
    satisfy it (a required keyword-only or third positional parameter).
    """
    if not callable(function):
        raise ConfigurationError("job_function", f"must be callable, got {type(function).__name__}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return 2  # builtins and C callables: assume (payload, ctx)
    parameters = list(signature.parameters.values())
    required_keywords = [
        p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    if required_keywords:
        raise ConfigurationError(
            "job_function",
            f"has required keyword-only parameters {required_keywords}: "
            "orchestra calls it with (payload), (payload, ctx) or nothing",
        )
    required = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) > 2:
        raise ConfigurationError(
            "job_function", "must take (payload), (payload, ctx) or nothing; it requires more"
        )
    # Only required parameters are filled: ``def f(payload, retries=3)`` must
    # not receive a JobContext as ``retries``. ``*args`` takes (payload, ctx).
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return 2
    return len(required)


def is_async(function: object) -> bool:
    """True for an ``async def`` function, and for an instance with an ``async def __call__``."""
    return inspect.iscoroutinefunction(function) or (
        not inspect.isroutine(function) and inspect.iscoroutinefunction(type(function).__call__)
    )


def call(function: Callable[..., Any], arity: int, payload: Any, ctx: Any) -> Any:
    """Call ``function`` with the first ``arity`` of ``(payload, ctx)``."""
    if arity == 2:
        return function(payload, ctx)
    if arity == 1:
        return function(payload)
    return function()
