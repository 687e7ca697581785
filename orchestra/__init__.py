"""orchestra: a PostgreSQL-backed job queue and scheduling orchestrator."""

from __future__ import annotations

from orchestra import events
from orchestra._backoff import Backoff
from orchestra._config import Config
from orchestra._definition import JobContext, JobDefinition, JobHandle
from orchestra._orchestrator import Orchestrator
from orchestra._worker import Worker, WorkerStats
from orchestra.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    OrchestraError,
    PayloadError,
    SchemaNotReadyError,
    UnknownJobError,
)

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "Config",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "JobContext",
    "JobDefinition",
    "JobHandle",
    "OrchestraError",
    "Orchestrator",
    "PayloadError",
    "SchemaNotReadyError",
    "UnknownJobError",
    "Worker",
    "WorkerStats",
    "__version__",
    "events",
]
