"""Unit tests of orchestra._migrate that need no database: the shipped migration files."""

from __future__ import annotations

from typing import Any, cast

import pytest

from orchestra import ConfigurationError, _migrate, _sql


class TestMigrations:
    """The migrations shipped with orchestra are numbered 1..n and render for any schema."""

    def test_versions_start_at_one_without_gaps(self) -> None:
        """Versions are exactly 1, 2, ..., n."""
        versions = [migration.version for migration in _migrate.migrations()]
        assert versions == list(range(1, len(versions) + 1))

    def test_first_is_initial(self) -> None:
        """The first migration is 0001_initial."""
        first = _migrate.migrations()[0]
        assert (first.version, first.name) == (1, "initial")

    def test_required_version_is_the_last(self) -> None:
        """required_version() is the version of the last migration."""
        assert _migrate.required_version() == _migrate.migrations()[-1].version

    def test_migrations_render_for_a_schema(self) -> None:
        """Every migration renders with the schema quoted and no placeholder left."""
        for migration in _migrate.migrations():
            rendered = _sql.render(migration.sql, "_queue")
            assert b"{schema}" not in rendered
            assert b'"_queue".' in rendered

    def test_initial_creates_the_core_tables(self) -> None:
        """0001_initial creates the definition, job and dependency tables."""
        sql = _migrate.migrations()[0].sql
        for table in ("job_definition", "job", "job_dependency"):
            assert f"CREATE TABLE {{schema}}.{table} (" in sql

    def test_cached(self) -> None:
        """migrations() reads the files once."""
        assert _migrate.migrations() is _migrate.migrations()


class TestPending:
    """Which migrations a migrate() run applies, given those already recorded and ``up_to``."""

    def test_everything_for_a_fresh_schema(self) -> None:
        """Without up_to, a schema with no version recorded gets every shipped migration."""
        assert _migrate.pending(set()) == list(_migrate.migrations())

    def test_up_to_stops_after_that_version(self) -> None:
        """up_to=n gives versions 1..n, in order, and nothing after them."""
        last = _migrate.required_version()
        for up_to in range(1, last + 1):
            versions = [m.version for m in _migrate.pending(set(), up_to)]
            assert versions == list(range(1, up_to + 1))

    def test_recorded_versions_are_skipped(self) -> None:
        """A schema migrated up to n - 1 gets only the later migrations."""
        last = _migrate.required_version()
        done = set(range(1, last))
        assert [m.version for m in _migrate.pending(done)] == [last]
        assert _migrate.pending(done, up_to=last - 1) == []

    def test_schema_past_up_to_gets_nothing(self) -> None:
        """up_to below the recorded version applies nothing (never a downgrade)."""
        done = {m.version for m in _migrate.migrations()}
        assert _migrate.pending(done, up_to=1) == []

    @pytest.mark.parametrize("up_to", [0, -1, 10_000, True, 1.0, "6"])
    def test_up_to_must_be_a_shipped_version(self, up_to: object) -> None:
        """An up_to that names no shipped migration is a ConfigurationError."""
        with pytest.raises(ConfigurationError) as info:
            _migrate.pending(set(), cast(Any, up_to))
        assert info.value.argument == "up_to"

    def test_migrate_refuses_a_bad_up_to_before_any_statement(self) -> None:
        """migrate() checks up_to before it touches the connection."""
        untouchable = cast(Any, object())  # any attribute access would fail
        with pytest.raises(ConfigurationError):
            _migrate.migrate(untouchable, "unit", up_to=_migrate.required_version() + 1)
