"""orchestra: a PostgreSQL-backed job queue and scheduling orchestrator.

The daemons (``Worker``, ``Orchestrator``) are imported on first use, so that a
process that only defers jobs loads none of their machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestra import events
from orchestra._backoff import Backoff
from orchestra._config import Config
from orchestra._definition import JobContext, JobDefinition, JobSpec
from orchestra._jobs import JobHandle
from orchestra._records import Attempt, DefinitionInfo, GraphNode, Job, JobGraph, PausedChannel
from orchestra._snooze import Snooze
from orchestra._workflow import (
    Workflow,
    chain,
    chain_async,
    chord,
    chord_async,
    group,
    group_async,
)
from orchestra.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DependencyResultError,
    JobFailed,
    JobStateError,
    OrchestraError,
    PayloadError,
    ResultTimeoutError,
    SchemaNotReadyError,
    UnknownDefinitionError,
    UnknownJobError,
)

if TYPE_CHECKING:
    from orchestra._orchestrator import Orchestrator
    from orchestra._worker import Worker, WorkerStats

__version__ = "0.1.0"

_LAZY = {
    "Orchestrator": "orchestra._orchestrator",
    "Worker": "orchestra._worker",
    "WorkerStats": "orchestra._worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestra' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "Attempt",
    "Backoff",
    "Config",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DefinitionInfo",
    "DependencyResultError",
    "GraphNode",
    "Job",
    "JobContext",
    "JobDefinition",
    "JobFailed",
    "JobGraph",
    "JobHandle",
    "JobSpec",
    "JobStateError",
    "OrchestraError",
    "Orchestrator",
    "PausedChannel",
    "PayloadError",
    "ResultTimeoutError",
    "SchemaNotReadyError",
    "Snooze",
    "UnknownDefinitionError",
    "UnknownJobError",
    "Worker",
    "WorkerStats",
    "Workflow",
    "__version__",
    "chain",
    "chain_async",
    "chord",
    "chord_async",
    "events",
    "group",
    "group_async",
]
