"""Unit tests of orchestra._migrate that need no database: the shipped migration files."""

from __future__ import annotations

from orchestra import _migrate, _sql


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
        """Every migration renders with the schema quoted and no placeholder left (A1)."""
        for migration in _migrate.migrations():
            rendered = _sql.render(migration.sql, "_queue")
            assert b"{schema}" not in rendered
            assert b'"_queue".' in rendered

    def test_initial_creates_the_core_tables(self) -> None:
        """0001_initial creates the definition, job and dependency tables (A1)."""
        sql = _migrate.migrations()[0].sql
        for table in ("job_definition", "job", "job_dependency"):
            assert f"CREATE TABLE {{schema}}.{table} (" in sql

    def test_cached(self) -> None:
        """migrations() reads the files once."""
        assert _migrate.migrations() is _migrate.migrations()
