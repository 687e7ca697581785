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
from orchestra._definition import JobContext, JobDefinition
from orchestra._jobs import JobHandle
from orchestra._records import Attempt, DefinitionInfo, Job, PausedChannel
from orchestra.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
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
    "Job",
    "JobContext",
    "JobDefinition",
    "JobFailed",
    "JobHandle",
    "JobStateError",
    "OrchestraError",
    "Orchestrator",
    "PausedChannel",
    "PayloadError",
    "ResultTimeoutError",
    "SchemaNotReadyError",
    "UnknownDefinitionError",
    "UnknownJobError",
    "Worker",
    "WorkerStats",
    "__version__",
    "events",
]
