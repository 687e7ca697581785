-- Queries of the migrator (orchestra/_migrate.py).

-- name: migrate_lock
-- Serialize migrators of one schema until the end of the transaction.
SELECT pg_advisory_xact_lock(hashtextextended(%(lock_name)s, 0));

-- name: schema_exists
-- Asked before schema_create: PostgreSQL checks CREATE SCHEMA IF NOT EXISTS
-- against CREATE on the database even when the schema exists, and a
-- least-privilege migrator (deploy/sql/roles.sql) owns the schema only.
SELECT to_regnamespace(%(schema)s) IS NOT NULL;

-- name: schema_create
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: schema_version_create
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: schema_version_list
SELECT version FROM {schema}.schema_version ORDER BY version;

-- name: schema_version_insert
INSERT INTO {schema}.schema_version (version, name) VALUES (%(version)s, %(name)s);

-- name: schema_version_table_exists
SELECT to_regclass(%(version_table)s) IS NOT NULL AS present;

-- name: schema_version_max
SELECT coalesce(max(version), 0) AS version FROM {schema}.schema_version;
