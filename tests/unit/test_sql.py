"""Unit tests of orchestra._sql: schema-name validation, query files, rendering."""

from __future__ import annotations

import pytest

from orchestra import ConfigurationError, _sql


class TestValidateSchemaName:
    """validate_schema_name is the only gate before a name is interpolated into SQL."""

    @pytest.mark.parametrize("name", ["_queue", "a1_b", "a" * 63, "_", "queue_2024"])
    def test_accepts_safe_names(self, name: str) -> None:
        """A lower-case identifier of 1 to 63 characters is returned unchanged."""
        assert _sql.validate_schema_name(name) == name

    @pytest.mark.parametrize(
        "name",
        [
            "Queue",
            "queUe",
            "1queue",
            "a" * 64,
            "",
            "pg_x",
            "pg_",
            'x"; DROP TABLE job;--',
            "x;y",
            "x'y",
            'x"y',
            "a b",
            "a-b",
            "a.b",
            "queue\n",
            "\nqueue",
            "queue\x00",
            "_queu\u0435",  # Cyrillic small ie instead of "e"
            "\uff51ueue",  # fullwidth q
            "\u0131d",  # dotless i
            "caf\u00e9",
        ],
    )
    def test_rejects_unsafe_names(self, name: str) -> None:
        """Upper case, leading digits, 64 chars, pg_ prefix, quotes, look-alikes all raise."""
        with pytest.raises(ConfigurationError) as info:
            _sql.validate_schema_name(name)
        assert info.value.argument == "schema"

    @pytest.mark.parametrize("value", [None, 5, b"_queue", ["_queue"], 1.5])
    def test_rejects_non_strings(self, value: object) -> None:
        """A value that is not a str raises ConfigurationError, not TypeError."""
        with pytest.raises(ConfigurationError) as info:
            _sql.validate_schema_name(value)
        assert info.value.argument == "schema"

    def test_error_is_a_value_error_naming_the_value(self) -> None:
        """The error is a ValueError whose message shows the rejected name."""
        with pytest.raises(ValueError, match="Bad"):
            _sql.validate_schema_name("Bad")


class TestParseQueries:
    """parse_queries splits a file of ``-- name:`` blocks."""

    def test_splits_named_queries(self) -> None:
        """Each ``-- name:`` line starts a query that runs until the next one."""
        text = (
            "-- file header comment\n"
            "\n"
            "-- name: first\n"
            "-- What the first query does.\n"
            "SELECT 1\n"
            "FROM t;\n"
            "\n"
            "-- name: second\n"
            "  -- indented comment\n"
            "SELECT 2;\n"
        )
        assert _sql.parse_queries(text) == {"first": "SELECT 1\nFROM t", "second": "SELECT 2"}

    def test_strips_comment_lines_and_trailing_semicolons(self) -> None:
        """Comment lines disappear, and trailing semicolons and blank lines are trimmed."""
        text = "-- name: q\n-- doc\nSELECT 1;;\n\n-- trailing comment\n"
        assert _sql.parse_queries(text) == {"q": "SELECT 1"}

    def test_keeps_comment_text_inside_a_line(self) -> None:
        """Only whole comment lines are removed, not code before an inline comment."""
        assert _sql.parse_queries("-- name: q\nSELECT 1 -- one\n") == {"q": "SELECT 1 -- one"}

    def test_rejects_duplicate_names(self) -> None:
        """A name defined twice in one file raises ValueError."""
        with pytest.raises(ValueError, match="defined twice"):
            _sql.parse_queries("-- name: q\nSELECT 1;\n-- name: q\nSELECT 2;\n", source="dup.sql")

    @pytest.mark.parametrize(
        "text",
        ["-- name: q\n", "-- name: q\n-- only a comment\n;\n", "-- name: q\n-- name: r\nSELECT 1"],
    )
    def test_rejects_empty_query(self, text: str) -> None:
        """A name with no statement after it raises ValueError naming the query."""
        with pytest.raises(ValueError, match="'q' is empty"):
            _sql.parse_queries(text)

    def test_rejects_text_without_name_lines(self) -> None:
        """Non-empty text without any ``-- name:`` line is refused, naming the source."""
        with pytest.raises(ValueError, match=r"x\.sql"):
            _sql.parse_queries("SELECT 1;", source="x.sql")

    def test_empty_text_has_no_queries(self) -> None:
        """An empty or blank file defines no query."""
        assert _sql.parse_queries("  \n") == {}


class TestAllQueries:
    """all_queries loads every ``.sql`` file shipped in orchestra/sql."""

    @pytest.mark.parametrize(
        "name",
        [
            "job_claim",
            "job_insert",
            "job_insert_many",
            "job_finish_many",
            "definition_upsert",
            "worker_heartbeat",
            "migrate_lock",
            "schema_version_max",
        ],
    )
    def test_includes_core_queries(self, name: str) -> None:
        """The queries the daemons and defer need are all present and non-empty."""
        assert _sql.all_queries()[name].strip()

    def test_statements_have_no_trailing_semicolon(self) -> None:
        """Every loaded statement is bare, so psycopg sends exactly one statement."""
        for name, statement in _sql.all_queries().items():
            assert not statement.endswith(";"), name

    def test_every_query_renders(self) -> None:
        """Every shipped query formats for a schema, with no leftover placeholder."""
        queries = _sql.Queries("_queue")
        for name in _sql.all_queries():
            rendered = queries[name]
            assert b"{schema}" not in rendered, name


class TestQueries:
    """Queries(schema)[name] renders and caches a query for one schema."""

    def test_renders_quoted_schema_as_bytes(self) -> None:
        """The rendered query is bytes with the schema quoted as an identifier."""
        rendered = _sql.Queries("_queue")["job_claim"]
        assert isinstance(rendered, bytes)
        assert b'"_queue".job' in rendered
        assert b"{schema}" not in rendered

    def test_caches_rendered_query(self) -> None:
        """Asking twice for a query returns the very same bytes object."""
        queries = _sql.Queries("_queue")
        assert queries["job_insert"] is queries["job_insert"]

    def test_unknown_name_raises_key_error(self) -> None:
        """An unknown query name raises KeyError naming it."""
        with pytest.raises(KeyError, match="no_such_query"):
            _sql.Queries("_queue")["no_such_query"]

    def test_invalid_schema_is_refused_at_construction(self) -> None:
        """Queries validates the schema name before rendering anything."""
        with pytest.raises(ConfigurationError):
            _sql.Queries('x"; DROP TABLE job;--')

    def test_schemas_do_not_share_renderings(self) -> None:
        """Two schemas render the same query with their own name."""
        assert b'"one".job' in _sql.Queries("one")["job_insert"]
        assert b'"two".job' in _sql.Queries("two")["job_insert"]


class TestRender:
    """render replaces ``{schema}`` and un-doubles literal braces."""

    def test_doubled_braces_become_literal_braces(self) -> None:
        """``'{{}}'`` in a template renders as ``'{}'``."""
        assert _sql.render("SELECT '{{}}' FROM {schema}.job", "_queue") == (
            b"SELECT '{}' FROM \"_queue\".job"
        )

    def test_invalid_schema_raises(self) -> None:
        """render validates the schema name itself."""
        with pytest.raises(ConfigurationError):
            _sql.render("SELECT 1 FROM {schema}.job", "Bad")
