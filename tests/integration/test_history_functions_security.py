"""The SECURITY DEFINER functions that make and drop history partitions.

They run as the owner of the tables and execute DDL (CREATE, ATTACH, DROP
TABLE), so who may call them, and what in the caller's session can steer
them, matters more than for the functions of schema version 6.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestra import Config, JobDefinition
from tests._history_partitions import finish_at, history_partitions, skip_ids_to
from tests._roles import Roles, denied


def noop(payload: Any = None) -> None:
    """A job function that does nothing."""


@pytest.fixture
def admin(test_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection (the test server's own user)."""
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def unapplied_roles(test_dsn: str, schema: str, admin: psycopg.Connection[Any]) -> Iterator[Roles]:
    """Role names for this test, nothing created yet; everything dropped afterwards."""
    roles = Roles(test_dsn, schema)
    try:
        yield roles
    finally:
        roles.drop(admin)


def test_a_producer_cannot_drop_history_partitions_after_the_migration(
    unapplied_roles: Roles, admin: psycopg.Connection[Any]
) -> None:
    """Between `orchestra migrate` and roles.sql applied again, the DDL functions are not PUBLIC.

    The runtime roles already have USAGE on the schema (roles.sql of the
    previous version); the migration must not leave them a function that
    drops partitions as the owner, whatever the retention.
    """
    roles = unapplied_roles
    roles.apply(admin)  # the schema's USAGE for the runtime roles, as before the upgrade
    roles.create_logins(admin)
    with roles.config("migrator") as migrator:
        migrator.prepare_schema()
    with roles.connect("producer") as producer:
        denied(producer, "SELECT * FROM {s}.job_history_drop_before('infinity', 10)", roles.schema)


def test_the_callers_temporary_tables_do_not_steer_the_drop(
    config: Config, db: psycopg.Connection[Any]
) -> None:
    """job_history_drop_before reads the catalogs, not tables of the caller's temporary schema.

    `SET search_path = pg_catalog` leaves pg_temp searched first for
    relation names; a caller could then make the function drop a partition
    of its choosing (as the owner) or none.
    """
    definition = JobDefinition(config, name="job", job_function=noop)
    old = definition.defer({})
    finish_at(db, config, old.id, "succeeded", dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    skip_ids_to(db, config, 2_000_000)
    db.execute("CREATE TEMP TABLE pg_inherits AS SELECT * FROM pg_catalog.pg_inherits WHERE false")
    dropped = db.execute(
        f'SELECT partition_name FROM "{config.schema}".job_history_drop_before('
        "now() - interval '1 hour', 1)"
    ).fetchall()
    assert dropped == [("job_history_0",)]
    assert "job_history_0" not in history_partitions(db, config)
