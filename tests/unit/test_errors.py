"""Unit tests of orchestra.errors: one hierarchy, context attributes, no passwords."""

from __future__ import annotations

import inspect

import pytest

import orchestra
from orchestra import _db, errors
from tests.unit._support import SECRET, SECRET_URI

ERROR_CLASSES: list[type[BaseException]] = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]


class TestHierarchy:
    """Every error orchestra raises on purpose is an OrchestraError."""

    @pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
    def test_derives_from_orchestra_error(self, cls: type[BaseException]) -> None:
        """Each class of orchestra.errors derives from OrchestraError."""
        assert issubclass(cls, errors.OrchestraError)

    def test_public_errors_exported(self) -> None:
        """The package root exports the public error classes."""
        for name in (
            "ConfigurationError",
            "DatabaseUnavailableError",
            "OrchestraError",
            "PayloadError",
            "SchemaNotReadyError",
            "UnknownJobError",
        ):
            assert getattr(orchestra, name) is getattr(errors, name)

    def test_default_message_is_docstring(self) -> None:
        """Without a message, the class docstring is the message."""
        assert str(errors.OrchestraError()) == "An orchestra operation failed."
        assert str(errors.OrchestraError("custom")) == "custom"


class TestErrorAttributes:
    """Errors carry their context as attributes."""

    def test_configuration_error(self) -> None:
        """ConfigurationError is a ValueError with .argument and .problem."""
        error = errors.ConfigurationError("num_attempts", "must be >= 1")
        assert isinstance(error, ValueError)
        assert error.argument == "num_attempts"
        assert error.problem == "must be >= 1"
        assert str(error) == "num_attempts: must be >= 1"

    def test_payload_error(self) -> None:
        """PayloadError is a ValueError naming the definition."""
        error = errors.PayloadError("send", "too large")
        assert isinstance(error, ValueError)
        assert error.definition == "send"
        assert "'send'" in str(error)

    def test_unknown_job_error(self) -> None:
        """UnknownJobError is a LookupError listing the ids."""
        error = errors.UnknownJobError((3, 4), "depends_on")
        assert isinstance(error, LookupError)
        assert error.job_ids == (3, 4)
        assert str(error) == "unknown job id(s) (depends_on): 3, 4"

    def test_schema_not_ready_error(self) -> None:
        """SchemaNotReadyError names the schema, both versions and the fix."""
        error = errors.SchemaNotReadyError("_queue", 0, 1)
        assert (error.schema, error.current, error.required) == ("_queue", 0, 1)
        assert "orchestra migrate" in str(error)

    def test_schema_not_ready_error_names_the_schema_to_migrate(self) -> None:
        """A schema behind this version: the command to run names it."""
        error = errors.SchemaNotReadyError("billing", 3, 7)
        assert error.exists is True
        assert str(error).startswith("schema 'billing' is at version 3, this orchestra needs 7")
        assert "`orchestra migrate --schema billing`" in str(error)

    def test_schema_not_ready_error_of_a_missing_schema_says_it_does_not_exist(self) -> None:
        """No such schema (a typo, most often): said first, migrate offered to create it."""
        error = errors.SchemaNotReadyError("nope", 0, 7, exists=False)
        assert str(error).startswith("schema 'nope' does not exist; ")
        assert "version" not in str(error)
        assert "create it with `orchestra migrate --schema nope`" in str(error)

    def test_database_unavailable_is_a_connection_error(self) -> None:
        """DatabaseUnavailableError is a ConnectionError with attempts and reason."""
        error = errors.DatabaseUnavailableError("host=x", 3, "refused")
        assert isinstance(error, ConnectionError)
        assert (error.dsn, error.attempts, error.reason) == ("host=x", 3, "refused")

    def test_database_unavailable_message_has_redacted_dsn_only(self) -> None:
        """Built the way orchestra builds it, the message shows the redacted DSN, never the password."""
        error = errors.DatabaseUnavailableError(_db.redact_dsn(SECRET_URI), 5, "refused")
        assert SECRET not in str(error)
        assert "postgresql://u:***@127.0.0.1:1/db" in str(error)
