"""Errors raised by orchestra.

Every error derives from :class:`OrchestraError`, so ``except OrchestraError``
catches anything orchestra raises on purpose. When no message is given, the
class docstring is the message. Errors carry their context as attributes, and
never a password: DSNs in messages are always redacted.
"""

from __future__ import annotations


class OrchestraError(Exception):
    """An orchestra operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(OrchestraError, ValueError):
    """A setting has a value orchestra cannot use.

    Attributes:
        argument: the name of the offending argument, as the caller spelled it.
    """

    def __init__(self, argument: str, problem: str) -> None:
        self.argument = argument
        self.problem = problem
        super().__init__(f"{argument}: {problem}")


class PayloadError(OrchestraError, ValueError):
    """A payload cannot be stored as JSON, is too large, or no longer fits its type.

    Attributes:
        definition: the job definition the payload was meant for.
    """

    def __init__(self, definition: str, problem: str) -> None:
        self.definition = definition
        self.problem = problem
        super().__init__(f"payload for {definition!r}: {problem}")


class UnknownJobError(OrchestraError, LookupError):
    """One or more job ids do not exist.

    Attributes:
        job_ids: the ids that were not found.
    """

    def __init__(self, job_ids: tuple[int, ...], context: str = "") -> None:
        self.job_ids = job_ids
        shown = ", ".join(str(i) for i in job_ids)
        where = f" ({context})" if context else ""
        super().__init__(f"unknown job id(s){where}: {shown}")


class DependencyResultError(OrchestraError, LookupError):
    """A job asked for its dependencies' results and some have none to give.

    Raised by ``ctx.dependency_results()``. A job runs only once all its
    dependencies succeeded, so a result is missing only when the history no
    longer keeps the dependency (it finished longer ago than the
    orchestrator's retention, ``finalized_job_threshold_ms``), or when the
    dependency was retried after this job was released.

    Attributes:
        job_id: the job that asked.
        missing: each dependency without a result, by id, with why.
    """

    def __init__(self, job_id: int, missing: dict[int, str]) -> None:
        self.job_id = job_id
        self.missing = missing
        reasons = "; ".join(f"job {dep} {why}" for dep, why in missing.items())
        super().__init__(f"job {job_id} cannot read the results of its dependencies: {reasons}")

    @property
    def job_ids(self) -> tuple[int, ...]:
        """The ids of the dependencies without a result."""
        return tuple(self.missing)


class DatabaseUnavailableError(OrchestraError, ConnectionError):
    """PostgreSQL could not be reached after retrying.

    Attributes:
        dsn: the redacted connection string.
        attempts: how many connection attempts were made.
    """

    def __init__(self, dsn: str, attempts: int, reason: str) -> None:
        self.dsn = dsn
        self.attempts = attempts
        self.reason = reason
        super().__init__(
            f"could not connect to PostgreSQL at {dsn} after {attempts} attempt(s): {reason}"
        )


class SchemaNotReadyError(OrchestraError):
    """The queue schema is missing or older than this version of orchestra needs.

    Attributes:
        schema: the schema name.
        current: the version found (0 when the schema does not exist).
        required: the version this orchestra needs.
        exists: False when there is no schema of that name at all (a misspelt
            name, most often: the message says so before how to create it).
    """

    def __init__(self, schema: str, current: int, required: int, *, exists: bool = True) -> None:
        self.schema = schema
        self.current = current
        self.required = required
        self.exists = exists
        if exists:
            message = (
                f"schema {schema!r} is at version {current}, this orchestra needs {required}: "
                f"run `orchestra migrate --schema {schema}` (or Config.prepare_schema())"
            )
        else:
            message = (
                f"schema {schema!r} does not exist; if that is the name you meant, create it "
                f"with `orchestra migrate --schema {schema}` (or Config.prepare_schema())"
            )
        super().__init__(message)


class EmbeddedServerError(OrchestraError):
    """The embedded PostgreSQL could not be started (is the `embedded` extra installed?)."""


class AppImportError(OrchestraError):
    """The --app reference could not be imported or is not an orchestra Config."""


class JobFailed(OrchestraError):  # noqa: N818 (the name the API promises)
    """A job whose result was awaited finished without succeeding.

    Attributes:
        job_id: the job's id.
        status: its final status (``failed`` or ``cancelled``).
        error: its last error (the reason the final attempt failed), if any.
    """

    def __init__(self, job_id: int, status: str, error: str | None) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error
        reason = f": {error}" if error else ""
        super().__init__(f"job {job_id} {status}{reason}")


class ResultTimeoutError(OrchestraError, TimeoutError):
    """A job's result was not ready within the timeout; the job itself is untouched.

    Attributes:
        job_id: the job's id.
        status: its status when the wait ended.
        timeout_s: how long was waited.
    """

    def __init__(self, job_id: int, status: str, timeout_s: float) -> None:
        self.job_id = job_id
        self.status = status
        self.timeout_s = timeout_s
        super().__init__(
            f"job {job_id} is still {status} after waiting {timeout_s:g} s for its result; "
            "ask again later with JobHandle(id, config).result()"
        )


class JobStateError(OrchestraError):
    """A job is not in a state that allows what was asked of it.

    Attributes:
        job_id: the job's id.
        status: its status when the action was refused.
        action: what was refused: ``retry``, ``cancel`` or ``delete``.
        reason: why, as shown in the message (by default ``it is <status>``).
    """

    def __init__(self, job_id: int, status: str, action: str, reason: str | None = None) -> None:
        self.job_id = job_id
        self.status = status
        self.action = action
        self.reason = reason or f"it is {status}"
        super().__init__(f"cannot {action} job {job_id}: {self.reason}")


class UnknownDefinitionError(OrchestraError, LookupError):
    """No definition of this name is stored in the queue.

    Attributes:
        name: the name that was not found.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"unknown definition {name!r}: none of that name is stored (a worker or "
            "orchestrator that carries it stores it when it starts)"
        )
