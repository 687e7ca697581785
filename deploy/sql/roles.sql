-- Least-privilege PostgreSQL roles for one orchestra queue schema.
--
-- Run it with psql as a superuser (or a role with CREATEROLE that is also a
-- member of the current owner of the schema's objects):
--
--   psql "$ADMIN_DSN" -v schema=_queue -f deploy/sql/roles.sql
--   psql "$ADMIN_DSN" -v schema=jobs -v producer_role=jobs_producer -f deploy/sql/roles.sql
--
-- Variables (psql -v NAME=VALUE) and their defaults:
--
--   schema             _queue                   the queue schema (Config(schema=...))
--   migrator_role      orchestra_migrator       owns the schema and its objects; runs `orchestra migrate`
--   producer_role      orchestra_producer       defers jobs, reads their status and result
--   worker_role        orchestra_worker         a producer that also claims, runs and finishes jobs
--   orchestrator_role  orchestra_orchestrator   maintenance: ticks, rescue, timeouts, sweeps, archive, leader lease
--   dashboard_role     orchestra_dashboard      reads everything, writes nothing
--
-- The five are NOLOGIN group roles: people and programs log in as LOGIN
-- roles that are members of them (example at the end of this file).
--
-- Order of operations. Column-level grants need the tables, so on a new
-- database apply the file twice around the first migration:
--
--   1. psql ... -f deploy/sql/roles.sql     roles, schema owned by the migrator, default privileges
--   2. orchestra migrate                     logged in as a member of the migrator role
--   3. psql ... -f deploy/sql/roles.sql     the per-table grants below
--
-- On a schema that is already migrated (by whichever user) one run does it
-- all: the schema and every table and type in it are handed to the migrator
-- role. After each later `orchestra migrate`, apply the roles.sql of the
-- version you migrated to: new tables already follow the default privileges,
-- and the file narrows them to what each role needs.
--
-- The file is idempotent and convergent: it creates what is missing, revokes
-- every privilege of the four runtime roles on the tables it knows and grants
-- exactly the list below, all in one transaction (ON_ERROR_STOP: an error
-- changes nothing). Tables it does not know (added by a newer migration) are
-- left as the default privileges made them.
--
-- What the statements need (orchestra/sql/*.sql): identity columns need no
-- sequence grant; ON DELETE CASCADE runs as the table owner, so deleting a job
-- needs no DELETE on job_attempt or job_dependency; LISTEN and pg_notify need
-- no grant; SELECT ... FOR [KEY] SHARE / [NO KEY] UPDATE needs UPDATE on at
-- least one column of the table, which every role that locks rows has.

\set ON_ERROR_STOP on

\if :{?schema}
\else
\set schema _queue
\endif
\if :{?migrator_role}
\else
\set migrator_role orchestra_migrator
\endif
\if :{?producer_role}
\else
\set producer_role orchestra_producer
\endif
\if :{?worker_role}
\else
\set worker_role orchestra_worker
\endif
\if :{?orchestrator_role}
\else
\set orchestrator_role orchestra_orchestrator
\endif
\if :{?dashboard_role}
\else
\set dashboard_role orchestra_dashboard
\endif

BEGIN;

-- Two runs at once would collide on the database's ACL ("tuple concurrently
-- updated"): the second waits for the first to commit.
SELECT pg_advisory_xact_lock(hashtextextended('orchestra deploy/sql/roles.sql', 0)) AS locked
\gset orchestra_

-- psql does not substitute variables inside $$ ... $$: the DO blocks read
-- the names from these transaction-local settings instead.
SET LOCAL orchestra.schema TO :'schema';
SET LOCAL orchestra.migrator_role TO :'migrator_role';
SET LOCAL orchestra.producer_role TO :'producer_role';
SET LOCAL orchestra.worker_role TO :'worker_role';
SET LOCAL orchestra.orchestrator_role TO :'orchestrator_role';
SET LOCAL orchestra.dashboard_role TO :'dashboard_role';

-- 1. The group roles (existing ones are kept as they are).
DO $$
DECLARE
    setting text;
    role_name text;
BEGIN
    FOREACH setting IN ARRAY ARRAY['migrator_role', 'producer_role', 'worker_role',
                                   'orchestrator_role', 'dashboard_role'] LOOP
        role_name := current_setting('orchestra.' || setting);
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        END IF;
    END LOOP;
END
$$;

-- A worker runs job functions, and job functions defer follow-up jobs: a
-- worker may do whatever a producer may.
GRANT :"producer_role" TO :"worker_role";

-- 2. The migrator owns the schema and everything in it; it needs no CREATE
-- on the database (`orchestra migrate` creates the schema only if missing).
SELECT count(*) = 8 AS migrated
FROM pg_catalog.pg_tables
WHERE schemaname = :'schema'
  AND tablename IN ('schema_version', 'job_definition', 'job', 'job_attempt',
                    'job_dependency', 'worker', 'leader', 'job_archive')
\gset orchestra_

CREATE SCHEMA IF NOT EXISTS :"schema" AUTHORIZATION :"migrator_role";
ALTER SCHEMA :"schema" OWNER TO :"migrator_role";

-- Objects created before the roles existed (a schema migrated by a superuser
-- or by the application's user) are handed to the migrator. Indexes and
-- identity sequences follow their table.
DO $$
DECLARE
    schema_oid oid := (SELECT oid FROM pg_namespace
                       WHERE nspname = current_setting('orchestra.schema'));
    owner_name text := current_setting('orchestra.migrator_role');
    owner_oid oid := (SELECT oid FROM pg_roles WHERE rolname = owner_name);
    item record;
BEGIN
    FOR item IN
        SELECT c.oid::regclass AS name FROM pg_class c
        WHERE c.relnamespace = schema_oid AND c.relkind IN ('r', 'p')
          AND c.relowner <> owner_oid
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO %I', item.name, owner_name);
    END LOOP;
    FOR item IN
        SELECT t.oid::regtype AS name FROM pg_type t
        WHERE t.typnamespace = schema_oid AND t.typtype IN ('e', 'd')
          AND t.typowner <> owner_oid
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO %I', item.name, owner_name);
    END LOOP;
    FOR item IN
        SELECT p.oid::regprocedure AS name FROM pg_proc p
        WHERE p.pronamespace = schema_oid AND p.proowner <> owner_oid
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', item.name, owner_name);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA :"schema"
    TO :"producer_role", :"worker_role", :"orchestrator_role", :"dashboard_role";

-- 3. Tables of future migrations (created by the migrator role) follow these
-- defaults until this file, in the version that knows them, is applied
-- again and narrows them. Broad enough that a rolling upgrade never stops on
-- a permission error: every runtime role reads, producers insert, workers
-- insert and update, the orchestrator also deletes. Functions and types are
-- usable by PUBLIC already (PostgreSQL's defaults).
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT SELECT ON TABLES
    TO :"producer_role", :"worker_role", :"orchestrator_role", :"dashboard_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT INSERT ON TABLES TO :"producer_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT INSERT, UPDATE ON TABLES TO :"worker_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT INSERT, UPDATE, DELETE ON TABLES TO :"orchestrator_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT USAGE ON SEQUENCES TO :"producer_role", :"worker_role", :"orchestrator_role";

-- 4. The tables of schema version 3, role by role.
\if :orchestra_migrated

REVOKE ALL ON
    :"schema".schema_version, :"schema".job_definition, :"schema".job,
    :"schema".job_attempt, :"schema".job_dependency, :"schema".worker,
    :"schema".leader, :"schema".job_archive
FROM :"producer_role", :"worker_role", :"orchestrator_role", :"dashboard_role";

-- Producer: JobDefinition.defer/defer_many (+ _async), JobHandle.status and
-- JobHandle.result.
--   definition_upsert       INSERT ... ON CONFLICT DO UPDATE of the settings; it also
--                           re-flags `limited` on the definition's unfinished jobs
--   job_insert              locks the dependencies FOR KEY SHARE, inserts the job and its edges
--   job_insert_many         inserts a batch
--   job_find_unique, job_ids_existing, job_status, job_outcome   reads (job_outcome: archive too)
--   job_recheck_waiting     after a defer that came back `waiting`: waiting -> available
-- UPDATE is limited to the columns `status` and `limited`. The CHECK
-- constraints of the job table tie `running` to a lock token and the final
-- statuses to finalized_at, neither of which a producer may write, so the
-- only moves open to it are waiting <-> available. It can neither delete a
-- job nor change its payload, result, attempts or lease. It cannot read the
-- attempt log (config.jobs.get needs the dashboard role) nor the daemons.
GRANT SELECT ON
    :"schema".schema_version, :"schema".job_definition, :"schema".job,
    :"schema".job_dependency, :"schema".job_archive
TO :"producer_role";
GRANT INSERT (name, channel, num_attempts, backoff, backoff_base_ms, backoff_max_ms, priority,
              repeat_interval_ms, cron, release_interval_ms, max_concurrency,
              lock_interval_ms, timeout_interval_ms),
      UPDATE (channel, num_attempts, backoff, backoff_base_ms, backoff_max_ms, priority,
              repeat_interval_ms, cron, release_interval_ms, max_concurrency,
              lock_interval_ms, timeout_interval_ms, last_heartbeat_at, updated_at)
ON :"schema".job_definition TO :"producer_role";
GRANT INSERT (definition, channel, status, priority, payload, max_attempts, run_at,
              unique_key, resource_key, limited, trace_context),
      UPDATE (status, limited)
ON :"schema".job TO :"producer_role";
GRANT INSERT (job_id, required_job_id) ON :"schema".job_dependency TO :"producer_role";

-- Worker: everything a producer may (membership above), plus
--   worker_register, worker_heartbeat, worker_delete   its row in `worker`
--   job_claim, definition_lock_limited + job_claim_limited (sets last_released_at)
--   job_finish_many, job_release_dependents             fenced finish, attempt log
--   definition_heartbeat_many                           last_heartbeat_at (granted to producers)
--   manage_job_get                                      callbacks read the job and its attempts
-- No DELETE on jobs; payload, definition, channel, priority, keys and
-- created_at stay read-only.
GRANT SELECT ON :"schema".job_attempt, :"schema".worker TO :"worker_role";
GRANT UPDATE (last_released_at) ON :"schema".job_definition TO :"worker_role";
GRANT UPDATE (status, attempt, run_at, locked_by, lock_token, locked_until, started_at,
              finalized_at, result, last_error, limited)
ON :"schema".job TO :"worker_role";
GRANT INSERT (job_id, attempt, worker_id, worker_name, started_at, outcome, error, traceback,
              lock_token)
ON :"schema".job_attempt TO :"worker_role";
GRANT INSERT (name, role, host, pid, channel, concurrency), UPDATE (heartbeat_at), DELETE
ON :"schema".worker TO :"worker_role";

-- Orchestrator (orchestra/sql/maintenance.sql, leader.sql, worker.sql): the
-- maintenance role, table-level on what it maintains.
--   leader_attempt_elect, leader_resign          the lease row
--   worker_register, worker_touch, worker_delete its own row; job_rescue_stale_workers deletes dead ones
--   definition_upsert, definition_heartbeat_many, job_insert_tick, definition_mark_tick
--   job_rescue_expired, job_rescue_stale_workers, job_finalize_timed_out,
--   job_finalize_unmet_dependencies, job_release_satisfied   update jobs, log lost/timed-out attempts
--   job_sweep_finalized (archive: INSERT into job_archive), definition_sweep_stale
--   job_archive_prune (archive_retention_ms: DELETE from job_archive)
GRANT SELECT ON
    :"schema".schema_version, :"schema".job_definition, :"schema".job,
    :"schema".job_attempt, :"schema".job_dependency, :"schema".worker,
    :"schema".leader, :"schema".job_archive
TO :"orchestrator_role";
GRANT INSERT, UPDATE, DELETE ON
    :"schema".job_definition, :"schema".job, :"schema".worker, :"schema".leader
TO :"orchestrator_role";
GRANT INSERT ON :"schema".job_attempt TO :"orchestrator_role";
GRANT INSERT, DELETE ON :"schema".job_archive TO :"orchestrator_role";

-- Dashboard: reads every table (orchestra jobs list/show, orchestra
-- definitions list, config.jobs.get/list/count/definitions, the web
-- dashboard without --allow-actions, metrics scrapers, `orchestra health`).
--
-- The management actions (config.jobs.retry/retry_failed/cancel/delete/
-- delete_failed, `orchestra jobs retry|cancel|delete`, the dashboard with
-- --allow-actions) write; grant them to the people or the process that
-- should have them, separately, for instance:
--
--   GRANT orchestra_orchestrator TO ops_alice;
--
-- or, narrower, a role of their own:
--
--   CREATE ROLE orchestra_operator NOLOGIN IN ROLE orchestra_dashboard;
--   GRANT UPDATE (status, attempt, result, run_at, finalized_at, locked_by, lock_token,
--                 locked_until, limited, last_error), DELETE ON _queue.job TO orchestra_operator;
--   GRANT INSERT ON _queue.job_attempt TO orchestra_operator;
GRANT SELECT ON
    :"schema".schema_version, :"schema".job_definition, :"schema".job,
    :"schema".job_attempt, :"schema".job_dependency, :"schema".worker,
    :"schema".leader, :"schema".job_archive
TO :"dashboard_role";

\else
\echo 'orchestra roles: schema' :"schema" 'is not migrated yet: roles, schema and default privileges are in place; run `orchestra migrate` as a member of' :"migrator_role" 'and apply this file again'
\endif

COMMIT;

-- LOGIN roles inherit a group role. Examples (choose your own names; set
-- passwords with psql's \password or your secret manager, so that they do
-- not land in the server log):
--
--   CREATE ROLE app_web          LOGIN IN ROLE orchestra_producer;
--   CREATE ROLE app_worker       LOGIN IN ROLE orchestra_worker;
--   CREATE ROLE app_orchestrator LOGIN IN ROLE orchestra_orchestrator;
--   CREATE ROLE app_dashboard    LOGIN IN ROLE orchestra_dashboard;
--   CREATE ROLE app_migrate      LOGIN IN ROLE orchestra_migrator;
--   -- Sessions of app_migrate act as orchestra_migrator, so the tables a
--   -- migration creates belong to the group role (and follow the default
--   -- privileges above) rather than to app_migrate:
--   ALTER ROLE app_migrate SET role = 'orchestra_migrator';
--
-- The LOGIN roles need CONNECT on the database (granted to PUBLIC unless you
-- revoked it). With PgBouncer, every LOGIN role needs an entry in its
-- auth_file (or auth_query); see docs/operations.md.
