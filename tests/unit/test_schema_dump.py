"""Unit tests of orchestra._schema_dump, the generator of schemas/schema.sql (``make schema``)."""

from __future__ import annotations

import subprocess
import sys

from orchestra import _migrate, _schema_dump, _sql

#: A pg_dump text in the form pg_dump 15 writes it, trimmed to three objects.
RAW_DUMP = """\
--
-- PostgreSQL database dump
--

\\restrict AbC123

-- Dumped from database version 15.20
-- Dumped by pg_dump version 15.20

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;

--
-- Name: dump_me; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA dump_me;


--
-- Name: f(); Type: FUNCTION; Schema: dump_me; Owner: -
--

CREATE FUNCTION dump_me.f() RETURNS text
    LANGUAGE sql
    AS $$
    SELECT '{}' || format('%s.%I', '"dump_me"', 'job') FROM "dump_me".job
$$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: job; Type: TABLE; Schema: dump_me; Owner: -
--

CREATE TABLE dump_me.job (
    id bigint NOT NULL,
    not_dump_me_at_all text
);


--
-- PostgreSQL database dump complete
--

\\unrestrict AbC123

"""


class TestNormalise:
    """normalise turns a pg_dump of a throwaway schema into migration-style text."""

    def test_keeps_only_the_statements_of_each_object(self) -> None:
        """Session settings, pg_dump's comments and meta-commands go; statements stay in order."""
        assert _schema_dump.normalise(RAW_DUMP, "dump_me") == (
            "CREATE SCHEMA {schema};\n"
            "\n"
            "CREATE FUNCTION {schema}.f() RETURNS text\n"
            "    LANGUAGE sql\n"
            "    AS $$\n"
            "    SELECT '{{}}' || format('%s.%I', '{schema}', 'job') FROM {schema}.job\n"
            "$$;\n"
            "\n"
            "CREATE TABLE {schema}.job (\n"
            "    id bigint NOT NULL,\n"
            "    not_dump_me_at_all text\n"
            ");\n"
        )

    def test_output_renders_for_another_schema(self) -> None:
        """The text is in the migrations' format: it renders for any schema name."""
        rendered = _sql.render(_schema_dump.normalise(RAW_DUMP, "dump_me"), "other")
        assert b'CREATE TABLE "other".job' in rendered
        assert b"SELECT '{}'" in rendered
        assert b"dump_me" not in rendered.replace(b"not_dump_me_at_all", b"")


class TestHeader:
    """The header of schema.sql names what made it."""

    def test_records_the_postgresql_major(self) -> None:
        """generated_major reads back the major that header wrote."""
        assert _schema_dump.generated_major(_schema_dump.header(15)) == 15

    def test_names_the_last_migration_and_the_command(self) -> None:
        """The header says which migrations it reflects and how to regenerate it."""
        last = _migrate.migrations()[-1]
        text = _schema_dump.header(15)
        assert f"{last.version:04d}_{last.name}" in text
        assert "make schema" in text

    def test_committed_file_starts_with_the_header(self) -> None:
        """schemas/schema.sql opens with the header of the PostgreSQL it was made with."""
        committed = _migrate.schema_file().read_text("utf-8")
        major = _schema_dump.generated_major(committed)
        assert major is not None
        assert committed.startswith(_schema_dump.header(major))


def test_the_package_does_not_import_the_generator() -> None:
    """The generator is a development tool: the library, daemons and CLI never load it."""
    code = (
        "import sys, orchestra, orchestra._worker, orchestra._orchestrator, orchestra.cli; "
        "print('orchestra._schema_dump' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
