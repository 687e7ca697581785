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
--   producer_role      orchestra_producer       defers jobs, reads the status and result of its own
--   worker_role        orchestra_worker         a producer that also claims, runs and finishes jobs
--   orchestrator_role  orchestra_orchestrator   maintenance: ticks, rescue, timeouts, history retention, leader lease
--   dashboard_role     orchestra_dashboard      reads everything, writes nothing
--   operator_role      orchestra_operator       the dashboard's reads plus the management actions
--                                               (retry, cancel, delete jobs; pause and resume
--                                               channels and definitions)
--
-- The six are NOLOGIN group roles: people and programs log in as LOGIN
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
-- every privilege of the five runtime roles (and of PUBLIC, on the functions
-- and the history's partitions) on the tables and functions it knows and
-- grants exactly the list below, replaces its row-level security policies,
-- all in one transaction (ON_ERROR_STOP: an error changes nothing). Tables it
-- does not know (added by a newer migration) are left as the default
-- privileges made them.
--
-- Privileges say which columns a role may write; row-level security policies
-- (section 5) say which rows, and with them which moves of the job state
-- machine: a producer only inserts jobs and reads its own (`created_by`), a
-- worker changes only unclaimed jobs, waiting jobs whose dependencies all
-- succeeded, and the running jobs of the daemons its own role registered, and
-- moves into the history only the jobs those daemons finish; nobody but the
-- orchestrator, the operator and the owner ends a job otherwise or touches a
-- finished one. The moves a plain privilege cannot express go through
-- SECURITY DEFINER functions owned by the migrator
-- (schemas/0006_least_privilege.sql, 0007_hot_table.sql). The owner of the
-- tables (the migrator, or whoever ran `orchestra migrate` when this file is
-- not used) bypasses the policies: a single-user deployment pays nothing for
-- them. docs/decisions/0018-least-privilege-rows-and-functions.md says why.
--
-- What the statements need (orchestra/sql/*.sql): identity columns need no
-- sequence grant, and inserting an explicit id into one (OVERRIDING SYSTEM
-- VALUE, a retry moving a finished job back into `job`) needs only INSERT on
-- that column; job_attempt and job_dependency have no foreign key to `job`
-- (schema version 7), so whoever moves a job into the history deletes its
-- attempt-log rows itself and needs DELETE there; LISTEN and pg_notify need
-- no grant; SELECT ... FOR [KEY] SHARE / [NO KEY] UPDATE needs UPDATE on at
-- least one column of the table, and passes the UPDATE policies too.
-- `job_history` is partitioned: a statement that names the parent is checked
-- against the parent's privileges and row-level security policies only
-- (PostgreSQL checks neither on the partitions it reaches through it), so
-- every grant and policy of the history is on the parent, and the statements
-- of orchestra name the parent (all but the orchestrator's retention of the
-- default partition, section 4).
--
-- Upgrading to schema version 7: apply this file right after `orchestra
-- migrate`, before the processes of the new version start: their workers
-- delete the jobs they finish from `job` and insert them into `job_history`,
-- which only this file grants them. (Until then the history follows the
-- default privileges of section 3, without row-level security.)
--
-- Upgrading to schema version 8 likewise: workers of the new version register
-- the `channels` column of `worker`, which only this file grants them (the
-- new table channel_pause follows the default privileges until then).

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
\if :{?operator_role}
\else
\set operator_role orchestra_operator
\endif

BEGIN;

-- The DROP POLICY IF EXISTS of a first run and the GRANTs of a second one
-- would each print a NOTICE; only warnings and errors are worth reading.
SET LOCAL client_min_messages TO warning;

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
SET LOCAL orchestra.operator_role TO :'operator_role';

-- 1. The group roles (existing ones are kept as they are).
DO $$
DECLARE
    setting text;
    role_name text;
BEGIN
    FOREACH setting IN ARRAY ARRAY['migrator_role', 'producer_role', 'worker_role',
                                   'orchestrator_role', 'dashboard_role', 'operator_role'] LOOP
        role_name := current_setting('orchestra.' || setting);
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        END IF;
    END LOOP;
END
$$;

-- A worker runs job functions, and job functions defer follow-up jobs: a
-- worker may do whatever a producer may. An operator looks at what it
-- manages: it may read whatever the dashboard reads.
GRANT :"producer_role" TO :"worker_role";
GRANT :"dashboard_role" TO :"operator_role";

-- 2. The migrator owns the schema and everything in it; it needs no CREATE
-- on the database (`orchestra migrate` creates the schema only if missing).
-- `migrated`: every table and function this file grants on exists (schema
-- version 8 or later).
SELECT count(*) = 10
       AND (SELECT count(*) FROM pg_catalog.pg_proc p
            JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = :'schema'
              AND p.proname IN ('job_recheck_waiting', 'job_find_unique', 'definition_ensure',
                                'job_dependencies_met', 'job_created_by_caller',
                                'worker_touch', 'worker_deregister',
                                'job_history_prepare', 'job_history_drop_before',
                                'job_history_partitions')) = 10
       AS migrated
FROM pg_catalog.pg_tables
WHERE schemaname = :'schema'
  AND tablename IN ('schema_version', 'job_definition', 'job', 'job_attempt',
                    'job_dependency', 'worker', 'leader', 'job_history', 'job_history_default',
                    'channel_pause')
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
    TO :"producer_role", :"worker_role", :"orchestrator_role", :"dashboard_role",
       :"operator_role";

-- 3. Tables of future migrations (created by the migrator role) follow these
-- defaults until this file, in the version that knows them, is applied
-- again and narrows them. Broad enough that a rolling upgrade never stops on
-- a permission error: every runtime role reads, producers insert, workers
-- insert and update, the orchestrator and the operator also delete.
-- Functions and types are usable by PUBLIC already (PostgreSQL's defaults).
-- The partitions that job_history_prepare makes (as the migrator) get these
-- too; statements reach them through their parent only, which is what
-- PostgreSQL checks then (section 4), and the function enables row-level
-- security on each, without a policy, so that no runtime role reads or
-- writes a partition named directly.
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT SELECT ON TABLES
    TO :"producer_role", :"worker_role", :"orchestrator_role", :"dashboard_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT INSERT ON TABLES TO :"producer_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT INSERT, UPDATE ON TABLES TO :"worker_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT INSERT, UPDATE, DELETE ON TABLES TO :"orchestrator_role", :"operator_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator_role" IN SCHEMA :"schema"
    GRANT USAGE ON SEQUENCES TO :"producer_role", :"worker_role", :"orchestrator_role";

-- 4. The tables and functions of schema version 8, role by role.
\if :orchestra_migrated

REVOKE ALL ON
    :"schema".schema_version, :"schema".job_definition, :"schema".job,
    :"schema".job_attempt, :"schema".job_dependency, :"schema".worker,
    :"schema".leader, :"schema".job_history, :"schema".job_history_default,
    :"schema".channel_pause
FROM :"producer_role", :"worker_role", :"orchestrator_role", :"dashboard_role",
     :"operator_role";

-- The partitions of the history. The statements name the parent: then
-- PostgreSQL checks the parent's privileges and row-level security policies,
-- never a partition's (PostgreSQL 15 applies the parent's policies to the
-- rows of every partition it reaches, and ignores the partitions' own).
-- Named directly, a partition would be checked on its own ACL and row
-- security instead, which would bypass the parent's policies. The partitions
-- are made by the migrator (the migration, job_history_prepare), so they
-- start with the default privileges of section 3: no runtime role keeps a
-- privilege on any, and each gets row-level security without a policy
-- (nobody but the owner sees or changes its rows when it is named), as
-- job_history_prepare does for the partitions it makes later. The default
-- partition gets its grant and policy back below: the orchestrator's
-- retention deletes its rows by name.
DO $$
DECLARE
    runtime text := format('%I, %I, %I, %I, %I, PUBLIC',
                           current_setting('orchestra.producer_role'),
                           current_setting('orchestra.worker_role'),
                           current_setting('orchestra.orchestrator_role'),
                           current_setting('orchestra.dashboard_role'),
                           current_setting('orchestra.operator_role'));
    item record;
BEGIN
    FOR item IN
        SELECT i.inhrelid::regclass AS name FROM pg_catalog.pg_inherits i
        WHERE i.inhparent = format('%I.job_history',
                                   current_setting('orchestra.schema'))::regclass
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s', item.name, runtime);
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', item.name);
    END LOOP;
END
$$;

-- The migration leaves EXECUTE to PUBLIC (so that new code works before this
-- file is applied again); here each function goes to the roles that call it.
REVOKE ALL ON FUNCTION
    :"schema".job_recheck_waiting(bigint, text),
    :"schema".job_find_unique(text, text),
    :"schema".definition_ensure(text, text, integer, text, bigint, bigint, smallint, bigint,
                                text, bigint, integer, bigint, bigint),
    :"schema".job_dependencies_met(bigint),
    :"schema".job_created_by_caller(bigint),
    :"schema".worker_touch(bigint, text),
    :"schema".worker_deregister(bigint, text),
    :"schema".job_history_prepare(bigint, bigint, bigint),
    :"schema".job_history_drop_before(timestamptz, integer),
    -- called by the two above only, as the owner
    :"schema".job_history_partitions()
FROM PUBLIC, :"producer_role", :"worker_role", :"orchestrator_role", :"dashboard_role",
     :"operator_role";

-- Producer: JobDefinition.defer/defer_many (+ _async), JobHandle.status and
-- JobHandle.result, of the jobs it created.
--   definition_ensure       the definition's row if missing, else its heartbeat (a function:
--                           the settings of an existing definition are the daemons')
--   job_insert, job_insert_simple, job_insert_many   the job and its dependency edges
--                           (dependencies are looked up in the hot table and the history)
--   job_find_unique         the id of the holder of a unique key (a function: the holder
--                           may be another role's job)
--   job_recheck_waiting     after a defer that came back `waiting`: waiting -> available if
--                           every dependency succeeded (a function)
--   job_ids_existing, job_status, job_outcome   reads of its own jobs, unfinished or finished
-- No UPDATE or DELETE on any table. The policies of section 5 let it read,
-- and depend on, only the jobs it created (and jobs deferred before schema
-- version 6, which have no recorded creator), in `job` and in `job_history`,
-- hang dependency edges only on its own jobs, and insert a job only with the
-- `limited` flag its definition implies. The CHECK constraints of the job
-- table keep a new row unfinished and tie `running` to a lock token, which it
-- may not insert. It cannot read the attempt log (config.jobs.get needs the
-- dashboard role) nor the daemons.
GRANT SELECT ON
    :"schema".schema_version, :"schema".job_definition, :"schema".job, :"schema".job_history
TO :"producer_role";
GRANT INSERT (definition, channel, status, priority, payload, max_attempts, run_at,
              unique_key, resource_key, limited, trace_context, tags, meta)
ON :"schema".job TO :"producer_role";
GRANT INSERT (job_id, required_job_id) ON :"schema".job_dependency TO :"producer_role";
GRANT EXECUTE ON FUNCTION
    :"schema".job_recheck_waiting(bigint, text),
    :"schema".job_find_unique(text, text),
    :"schema".definition_ensure(text, text, integer, text, bigint, bigint, smallint, bigint,
                                text, bigint, integer, bigint, bigint),
    :"schema".job_created_by_caller(bigint)
TO :"producer_role";

-- Worker: everything a producer may (membership above), plus
--   definition_upsert                                   the settings of the definitions it carries
--   worker_register                                     inserts its row, with the hash of its secret
--   worker_heartbeat, worker_delete                     through worker_touch / worker_deregister
--                                                       (functions that want the daemon's secret:
--                                                       no UPDATE or DELETE on `worker`); the
--                                                       heartbeat reads the history for held jobs
--                                                       cancelled meanwhile
--   job_claim, definition_lock_limited + job_claim_limited (sets last_released_at; read the
--                       paused channels and definitions)
--   job_finish_many     fenced finish: a retry updates the job and logs the attempt; the end of
--                       a job deletes it from `job`, deletes its attempt-log rows and inserts
--                       it, with them, into `job_history`
--   job_release_dependents, job_claim_recover, job_finish_recorded (reads the history)
--   job_dependency_results  a running job's ctx.dependency_results() (reads the edges and
--                       the history)
--   job_progress_set    the progress of the running jobs it holds (fenced by lock token)
--   definition_heartbeat_many                           last_heartbeat_at
--   manage_job_get                                      callbacks read the job and its attempts
-- Payload, definition, channel, priority, keys and created_at stay read-only
-- in `job`, and `job_history` takes them only as they are in the job it
-- held. The policies of section 5 restrict its UPDATEs of jobs to available
-- jobs (claim), waiting jobs whose dependencies all succeeded (release) and
-- running jobs held by a daemon its role registered (heartbeat, finish), its
-- DELETEs of jobs and attempt-log rows to those running jobs, and its
-- history rows to the jobs those daemons held; finished jobs and other
-- roles' running jobs are out of its reach, and so are the `worker` rows of
-- other roles. It may not cancel a job.
GRANT SELECT ON
    :"schema".job_attempt, :"schema".worker, :"schema".job_dependency, :"schema".channel_pause
TO :"worker_role";
GRANT INSERT (name, channel, num_attempts, backoff, backoff_base_ms, backoff_max_ms, priority,
              repeat_interval_ms, cron, release_interval_ms, max_concurrency,
              lock_interval_ms, timeout_interval_ms),
      UPDATE (channel, num_attempts, backoff, backoff_base_ms, backoff_max_ms, priority,
              repeat_interval_ms, cron, release_interval_ms, max_concurrency,
              lock_interval_ms, timeout_interval_ms, last_heartbeat_at, updated_at,
              last_released_at)
ON :"schema".job_definition TO :"worker_role";
GRANT UPDATE (status, attempt, run_at, locked_by, lock_token, locked_until, started_at,
              last_error, limited, progress),
      DELETE
ON :"schema".job TO :"worker_role";
GRANT INSERT (job_id, attempt, worker_id, worker_name, started_at, outcome, error, traceback,
              lock_token),
      DELETE
ON :"schema".job_attempt TO :"worker_role";
-- Every column: the history row is the job's row, checked by the policy.
GRANT INSERT ON :"schema".job_history TO :"worker_role";
GRANT INSERT (name, role, host, pid, channel, channels, concurrency, secret_hash)
ON :"schema".worker TO :"worker_role";
GRANT EXECUTE ON FUNCTION
    :"schema".job_dependencies_met(bigint),
    :"schema".worker_touch(bigint, text),
    :"schema".worker_deregister(bigint, text)
TO :"worker_role";

-- Orchestrator (orchestra/sql/orchestrator.sql, daemon.sql, worker.sql,
-- monitoring.sql): the maintenance role, table-level on what it maintains, every
-- row.
--   leader_attempt_elect, leader_resign          the lease row
--   worker_register, worker_touch, worker_delete its own row; job_rescue_stale_workers deletes dead ones
--   definition_upsert, definition_heartbeat_many, job_insert_tick, definition_plan_tick
--   job_rescue_expired, job_rescue_stale_workers, job_finalize_timed_out,
--   job_finalize_unmet_dependencies              retry jobs (attempt logged), or move them into
--                                                the history with their attempt log
--   job_release_satisfied                        waiting -> available
--   job_history_prepare, job_history_drop_before partitions of the history (functions: making
--                                                and dropping partitions is the owner's)
--   job_history_default_prune                    rows of the default partition past retention,
--                                                named directly (the only partition that is)
--   job_attempt_prune_orphans, job_dependency_prune_orphans
--                                                attempt-log rows and edges of jobs deleted while
--                                                unfinished
--   definition_sweep_stale
-- and the producer's functions, for an orchestrator process that defers. The
-- prunes lock the attempt-log and default-partition rows they delete (FOR
-- UPDATE, which needs UPDATE on the table; it deletes and inserts those rows
-- anyway). The management actions are the operator's: their statements lock
-- history rows, which needs the UPDATE on job_history that the orchestrator
-- does not get.
GRANT SELECT ON
    :"schema".schema_version, :"schema".job_definition, :"schema".job,
    :"schema".job_attempt, :"schema".job_dependency, :"schema".worker,
    :"schema".leader, :"schema".job_history, :"schema".channel_pause
TO :"orchestrator_role";
GRANT INSERT, UPDATE, DELETE ON
    :"schema".job_definition, :"schema".job, :"schema".worker, :"schema".leader
TO :"orchestrator_role";
GRANT INSERT, UPDATE, DELETE ON :"schema".job_attempt TO :"orchestrator_role";
GRANT INSERT, DELETE ON :"schema".job_dependency, :"schema".job_history TO :"orchestrator_role";
GRANT SELECT, UPDATE, DELETE ON :"schema".job_history_default TO :"orchestrator_role";
GRANT EXECUTE ON FUNCTION
    :"schema".job_recheck_waiting(bigint, text),
    :"schema".job_find_unique(text, text),
    :"schema".definition_ensure(text, text, integer, text, bigint, bigint, smallint, bigint,
                                text, bigint, integer, bigint, bigint),
    :"schema".worker_touch(bigint, text),
    :"schema".worker_deregister(bigint, text),
    :"schema".job_history_prepare(bigint, bigint, bigint),
    :"schema".job_history_drop_before(timestamptz, integer)
TO :"orchestrator_role";

-- Dashboard: reads every table, through the history's parent (orchestra jobs
-- list/show, orchestra definitions list, config.jobs.get/list/count/
-- definitions, the web dashboard without --allow-actions, metrics scrapers,
-- `orchestra health`).
GRANT SELECT ON
    :"schema".schema_version, :"schema".job_definition, :"schema".job,
    :"schema".job_attempt, :"schema".job_dependency, :"schema".worker,
    :"schema".leader, :"schema".job_history, :"schema".channel_pause
TO :"dashboard_role";

-- Operator: what the dashboard reads (membership above), plus the management
-- actions (orchestra/sql/manage.sql: config.jobs.retry/retry_failed/cancel/
-- delete/delete_failed, `orchestra jobs retry|cancel|delete`, the dashboard
-- with --allow-actions). Give it to the people or the process that should
-- have them (GRANT orchestra_operator TO ops_alice).
--   manage_job_retry, manage_job_retry_failed
--       an available job: made due (run_at, `limited`); a finished job moves back from the
--       history into `job` with its id (INSERT ... OVERRIDING SYSTEM VALUE: an explicit value
--       for the identity column needs INSERT on that column, nothing more) and its attempt
--       log back into job_attempt; then job_recheck_waiting for those that came back waiting
--   manage_job_cancel   moves an unfinished job into the history, with its attempt log
--   manage_job_delete, manage_job_delete_failed
--       deletes a job from either table, with its attempt-log rows and its edges
--   manage_channel_pause, manage_channel_resume    a row of channel_pause
--   manage_definition_pause                        job_definition.paused
-- The retries and deletes lock the history row they move (FOR UPDATE, which
-- needs UPDATE on the table): it may delete and insert those rows anyway, so
-- the UPDATE adds nothing. Every row: the policies of section 5 give it all
-- of them.
GRANT INSERT (id, definition, channel, status, priority, payload, attempt, max_attempts, run_at,
              unique_key, resource_key, tick_at, limited, created_at, started_at, last_error,
              trace_context, created_by, tags, meta, progress),
      UPDATE (run_at, limited),
      DELETE
ON :"schema".job TO :"operator_role";
GRANT INSERT (id, definition, channel, status, priority, payload, result, attempt, max_attempts,
              run_at, unique_key, resource_key, tick_at, created_at, started_at, finalized_at,
              last_error, attempts, trace_context, created_by, tags, meta, progress),
      UPDATE, DELETE
ON :"schema".job_history TO :"operator_role";
GRANT INSERT (job_id, attempt, worker_id, worker_name, started_at, finished_at, outcome, error,
              traceback, lock_token),
      DELETE
ON :"schema".job_attempt TO :"operator_role";
GRANT DELETE ON :"schema".job_dependency TO :"operator_role";
GRANT INSERT (channel), DELETE ON :"schema".channel_pause TO :"operator_role";
GRANT UPDATE (paused) ON :"schema".job_definition TO :"operator_role";
GRANT EXECUTE ON FUNCTION :"schema".job_recheck_waiting(bigint, text) TO :"operator_role";

-- 5. Row-level security on the tables whose rows belong to someone: jobs
-- (unfinished and finished, their attempt log and edges) to the role that
-- created them, `worker` rows to the role that registered them. A role
-- without a policy on such a table sees none of its rows; the owner and
-- superusers bypass the policies. Row security is enabled on the history's
-- parent, which is what applies to statements that name it (PostgreSQL 15
-- enforces a partitioned table's policies on every row a query through it
-- reaches, in whichever partition). Policies are dropped and created again,
-- so a second run converges.
ALTER TABLE :"schema".job ENABLE ROW LEVEL SECURITY;
ALTER TABLE :"schema".job_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE :"schema".job_attempt ENABLE ROW LEVEL SECURITY;
ALTER TABLE :"schema".job_dependency ENABLE ROW LEVEL SECURITY;
ALTER TABLE :"schema".worker ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS producer_select_own ON :"schema".job;
DROP POLICY IF EXISTS producer_insert ON :"schema".job;
DROP POLICY IF EXISTS worker_select ON :"schema".job;
DROP POLICY IF EXISTS worker_update_unclaimed_or_held ON :"schema".job;
DROP POLICY IF EXISTS worker_delete_held ON :"schema".job;
DROP POLICY IF EXISTS orchestrator_all ON :"schema".job;
DROP POLICY IF EXISTS dashboard_select ON :"schema".job;
DROP POLICY IF EXISTS operator_all ON :"schema".job;
DROP POLICY IF EXISTS producer_select_own ON :"schema".job_history;
DROP POLICY IF EXISTS worker_select ON :"schema".job_history;
DROP POLICY IF EXISTS worker_insert_held ON :"schema".job_history;
DROP POLICY IF EXISTS orchestrator_all ON :"schema".job_history;
DROP POLICY IF EXISTS dashboard_select ON :"schema".job_history;
DROP POLICY IF EXISTS operator_all ON :"schema".job_history;
DROP POLICY IF EXISTS orchestrator_all ON :"schema".job_history_default;
DROP POLICY IF EXISTS worker_select ON :"schema".job_attempt;
DROP POLICY IF EXISTS worker_insert ON :"schema".job_attempt;
DROP POLICY IF EXISTS worker_delete_held ON :"schema".job_attempt;
DROP POLICY IF EXISTS orchestrator_all ON :"schema".job_attempt;
DROP POLICY IF EXISTS dashboard_select ON :"schema".job_attempt;
DROP POLICY IF EXISTS operator_all ON :"schema".job_attempt;
DROP POLICY IF EXISTS producer_insert_on_own_jobs ON :"schema".job_dependency;
DROP POLICY IF EXISTS worker_select ON :"schema".job_dependency;
DROP POLICY IF EXISTS orchestrator_all ON :"schema".job_dependency;
DROP POLICY IF EXISTS dashboard_select ON :"schema".job_dependency;
DROP POLICY IF EXISTS operator_all ON :"schema".job_dependency;
DROP POLICY IF EXISTS worker_own_role ON :"schema".worker;
DROP POLICY IF EXISTS orchestrator_all ON :"schema".worker;
DROP POLICY IF EXISTS dashboard_select ON :"schema".worker;

-- Jobs. A producer reads the jobs its role created; NULL is a job deferred
-- before schema version 6, readable as before. It inserts a job only with the
-- `limited` flag its definition and resource key imply (what job_insert
-- computes), so that it cannot take a job out of its definition's rate limit.
CREATE POLICY producer_select_own ON :"schema".job FOR SELECT TO :"producer_role"
    USING (created_by = current_user OR created_by IS NULL);
CREATE POLICY producer_insert ON :"schema".job FOR INSERT TO :"producer_role"
    WITH CHECK (
        created_by = current_user
        AND limited = (resource_key IS NOT NULL OR coalesce(
            (SELECT d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL
             FROM :"schema".job_definition d WHERE d.name = job.definition), false)));
-- A worker runs any job of the channels it serves, so it reads every job. It
-- changes an available job (claim), a waiting job whose dependencies all
-- succeeded (release; job_dependencies_met reads them as the owner: a policy
-- cannot query the table it guards) and a running job held by a daemon its
-- role registered (heartbeat, finish); it deletes only such a running job
-- (the end of the job, which moves it into the history). Never another
-- role's running job. The rows outside the policy are skipped, not refused:
-- an UPDATE or DELETE aimed at them changes nothing. The new row may be
-- anything the column grants and CHECK constraints allow except `cancelled`
-- (an operator's action); the old row is what the policy guards, because a
-- WITH CHECK that failed would abort a whole batch of claims and finishes.
CREATE POLICY worker_select ON :"schema".job FOR SELECT TO :"worker_role"
    USING (true);
CREATE POLICY worker_update_unclaimed_or_held ON :"schema".job FOR UPDATE TO :"worker_role"
    USING (
        status = 'available'
        OR (status = 'waiting' AND :"schema".job_dependencies_met(id))
        OR (status = 'running' AND locked_by IN (
            SELECT w.id FROM :"schema".worker w
            WHERE w.registered_by = current_user OR w.registered_by IS NULL)))
    WITH CHECK (status <> 'cancelled');
CREATE POLICY worker_delete_held ON :"schema".job FOR DELETE TO :"worker_role"
    USING (
        status = 'running' AND locked_by IN (
            SELECT w.id FROM :"schema".worker w
            WHERE w.registered_by = current_user OR w.registered_by IS NULL));
CREATE POLICY orchestrator_all ON :"schema".job TO :"orchestrator_role"
    USING (true) WITH CHECK (true);
CREATE POLICY dashboard_select ON :"schema".job FOR SELECT TO :"dashboard_role"
    USING (true);
CREATE POLICY operator_all ON :"schema".job TO :"operator_role"
    USING (true) WITH CHECK (true);

-- The history: readable as the jobs it keeps (created_by moves with the
-- job). A worker inserts only the end of a job that a daemon of its role
-- holds: the row's id, attempt and lock token are those of a running job
-- (in the statement's snapshot, where the job_finish_many that deletes it
-- from `job` still sees it), its identity columns as they are there, and its
-- status not `cancelled`. Nothing updates or deletes a history row but the
-- orchestrator (retention), the operator and the owner. This one is a WITH
-- CHECK, which raises: an INSERT has no old row to skip; the finishing
-- statement inserts only the rows its DELETE of `job` (guarded as above)
-- returned, so it never trips it.
CREATE POLICY producer_select_own ON :"schema".job_history FOR SELECT TO :"producer_role"
    USING (created_by = current_user OR created_by IS NULL);
CREATE POLICY worker_select ON :"schema".job_history FOR SELECT TO :"worker_role"
    USING (true);
CREATE POLICY worker_insert_held ON :"schema".job_history FOR INSERT TO :"worker_role"
    WITH CHECK (
        status <> 'cancelled'
        AND EXISTS (
            SELECT 1 FROM :"schema".job j
            WHERE j.id = job_history.id
              AND j.status = 'running'
              AND j.attempt = job_history.attempt
              AND j.lock_token = job_history.lock_token
              AND j.locked_by IN (
                  SELECT w.id FROM :"schema".worker w
                  WHERE w.registered_by = current_user OR w.registered_by IS NULL)
              AND j.definition = job_history.definition
              AND j.channel = job_history.channel
              AND j.priority = job_history.priority
              AND j.payload = job_history.payload
              AND j.max_attempts = job_history.max_attempts
              AND j.created_at = job_history.created_at
              AND j.unique_key IS NOT DISTINCT FROM job_history.unique_key
              AND j.resource_key IS NOT DISTINCT FROM job_history.resource_key
              AND j.tick_at IS NOT DISTINCT FROM job_history.tick_at
              AND j.trace_context IS NOT DISTINCT FROM job_history.trace_context
              AND j.tags = job_history.tags
              AND j.meta = job_history.meta
              AND j.created_by IS NOT DISTINCT FROM job_history.created_by));
CREATE POLICY orchestrator_all ON :"schema".job_history TO :"orchestrator_role"
    USING (true) WITH CHECK (true);
CREATE POLICY dashboard_select ON :"schema".job_history FOR SELECT TO :"dashboard_role"
    USING (true);
CREATE POLICY operator_all ON :"schema".job_history TO :"operator_role"
    USING (true) WITH CHECK (true);
-- The default partition, named by the orchestrator's retention
-- (job_history_default_prune); the other partitions have no policy at all.
CREATE POLICY orchestrator_all ON :"schema".job_history_default TO :"orchestrator_role"
    USING (true) WITH CHECK (true);

-- The attempt log of unfinished jobs. A worker logs attempts (it is trusted
-- with what its jobs report) and deletes the rows of a running job a daemon
-- of its role holds, as it moves them into that job's history row.
CREATE POLICY worker_select ON :"schema".job_attempt FOR SELECT TO :"worker_role"
    USING (true);
CREATE POLICY worker_insert ON :"schema".job_attempt FOR INSERT TO :"worker_role"
    WITH CHECK (true);
CREATE POLICY worker_delete_held ON :"schema".job_attempt FOR DELETE TO :"worker_role"
    USING (job_id IN (
        SELECT j.id FROM :"schema".job j
        WHERE j.status = 'running' AND j.locked_by IN (
            SELECT w.id FROM :"schema".worker w
            WHERE w.registered_by = current_user OR w.registered_by IS NULL)));
CREATE POLICY orchestrator_all ON :"schema".job_attempt TO :"orchestrator_role"
    USING (true) WITH CHECK (true);
CREATE POLICY dashboard_select ON :"schema".job_attempt FOR SELECT TO :"dashboard_role"
    USING (true);
CREATE POLICY operator_all ON :"schema".job_attempt TO :"operator_role"
    USING (true) WITH CHECK (true);

-- Dependency edges: a producer (and a worker deferring a follow-up) adds them
-- only to jobs its role created. An edge on another role's waiting job would
-- hold it back, or fail it with the new dependency. job_created_by_caller is
-- VOLATILE so that it sees the job that job_insert inserts in the same
-- statement, just before its edges.
CREATE POLICY producer_insert_on_own_jobs ON :"schema".job_dependency
    FOR INSERT TO :"producer_role"
    WITH CHECK (:"schema".job_created_by_caller(job_id));
CREATE POLICY worker_select ON :"schema".job_dependency FOR SELECT TO :"worker_role"
    USING (true);
CREATE POLICY orchestrator_all ON :"schema".job_dependency TO :"orchestrator_role"
    USING (true) WITH CHECK (true);
CREATE POLICY dashboard_select ON :"schema".job_dependency FOR SELECT TO :"dashboard_role"
    USING (true);
CREATE POLICY operator_all ON :"schema".job_dependency TO :"operator_role"
    USING (true) WITH CHECK (true);

-- Daemons: a worker registers and sees the rows of its own role only (NULL:
-- a daemon registered before schema version 6); it heartbeats and deletes
-- only its own row, through functions that want the secret the daemon made
-- at registration (only its hash is stored), so that not even a process of
-- the same LOGIN role can keep a dead daemon alive or remove a live one.
-- Running jobs are guarded per role (the job policy above): give each
-- deployment that must not touch another's jobs a LOGIN role of its own.
-- The orchestrator reaps dead daemons of every role.
CREATE POLICY worker_own_role ON :"schema".worker TO :"worker_role"
    USING (registered_by = current_user OR registered_by IS NULL)
    WITH CHECK (registered_by = current_user OR registered_by IS NULL);
CREATE POLICY orchestrator_all ON :"schema".worker TO :"orchestrator_role"
    USING (true) WITH CHECK (true);
CREATE POLICY dashboard_select ON :"schema".worker FOR SELECT TO :"dashboard_role"
    USING (true);

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
--   CREATE ROLE ops_alice        LOGIN IN ROLE orchestra_operator;
--   CREATE ROLE app_migrate      LOGIN IN ROLE orchestra_migrator;
--   -- Sessions of app_migrate act as orchestra_migrator, so the tables a
--   -- migration creates belong to the group role (and follow the default
--   -- privileges above) rather than to app_migrate:
--   ALTER ROLE app_migrate SET role = 'orchestra_migrator';
--   -- Optional: let the orchestrator and the dashboard see how long other
--   -- roles' transactions have been open (what holds back vacuum on the job
--   -- table; docs/operations.md, "Long transactions"). pg_monitor reads
--   -- statistics and settings, not the data in your tables:
--   GRANT pg_monitor TO app_orchestrator, app_dashboard;
--
-- The LOGIN roles need CONNECT on the database (granted to PUBLIC unless you
-- revoked it). With PgBouncer, every LOGIN role needs an entry in its
-- auth_file (or auth_query); see docs/operations.md.
