-- 0006_least_privilege: who created a job or registered a daemon, and the
-- guarded functions that let deploy/sql/roles.sql take every UPDATE of jobs
-- and definitions away from producers (docs/decisions/0018).
--
-- Nothing here changes what the schema's owner (or a superuser) may do: row
-- level security is enabled by roles.sql, for its roles only, and the
-- functions do what the statements they replace did. EXECUTE stays granted to
-- PUBLIC (PostgreSQL's default) so that code of this version works at once
-- for the roles of an older roles.sql; roles.sql revokes it and grants each
-- function to the roles that need it.

-- The role that inserted the job (the LOGIN role, or whatever role the
-- session had set): a producer role reads its own jobs only. Added NULL, then
-- given its default, so that jobs deferred before this migration keep NULL
-- ("unknown") instead of the migrator's name, and the table is not rewritten.
ALTER TABLE {schema}.job ADD COLUMN created_by text NULL;
ALTER TABLE {schema}.job ALTER COLUMN created_by SET DEFAULT current_user;
-- Carried into the archive by job_sweep_finalized, so that a producer still
-- reads its job's result once the job is archived.
ALTER TABLE {schema}.job_archive ADD COLUMN created_by text NULL;
-- The role that registered a daemon: a worker role heartbeats and deletes
-- only the rows of its own role, and changes only the running jobs those
-- rows hold.
ALTER TABLE {schema}.worker ADD COLUMN registered_by text NULL;
ALTER TABLE {schema}.worker ALTER COLUMN registered_by SET DEFAULT current_user;
-- The SHA-256 of a secret each daemon makes when it registers and keeps in
-- memory: its heartbeat and its deregistration (worker_touch,
-- worker_deregister) present the secret, so that no other process, even one
-- logged in as the same role, can keep a dead daemon alive or remove a live
-- one. Only the hash is stored, so that reading the table reveals nothing.
-- NULL for daemons registered before this migration.
ALTER TABLE {schema}.worker ADD COLUMN secret_hash bytea NULL;

-- The functions below are SECURITY DEFINER (they run as their owner, the
-- migrator role once roles.sql has run) with an empty search_path and
-- schema-qualified bodies, so that a caller can neither widen them nor
-- redirect a name they use. Each enforces in SQL the one rule it exists for.

-- After a defer that came back `waiting` has committed: lock the job's
-- dependencies FOR SHARE (which waits for a finish in flight on them, and
-- makes a later finish wait for us) and make the job available if, and only
-- if, every dependency has succeeded (decision 0007). Returns how many
-- channels were woken (0 or 1). Anyone may call it for any job: it never does
-- more than what the finish of the last dependency would have done.
CREATE FUNCTION {schema}.job_recheck_waiting(p_job_id bigint, p_notify_channel text)
RETURNS bigint
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
    WITH deps AS MATERIALIZED (
        SELECT j.id, j.status FROM {schema}.job j
        WHERE j.id IN (SELECT d.required_job_id FROM {schema}.job_dependency d
                       WHERE d.job_id = p_job_id)
        FOR SHARE
    ), released AS (
        UPDATE {schema}.job j SET status = 'available'
        WHERE j.id = p_job_id AND j.status = 'waiting'
          AND NOT EXISTS (SELECT 1 FROM deps WHERE deps.status <> 'succeeded')
        RETURNING j.channel
    )
    SELECT count(pg_catalog.pg_notify(p_notify_channel, released.channel)) FROM released
$$;

-- The unfinished job of a definition that holds a unique key, after an
-- insert with that key inserted nothing. Only its id: the caller proved it
-- knows the key, and gets the handle that defer promises; the job's status,
-- payload and result stay readable only by the role that created it.
CREATE FUNCTION {schema}.job_find_unique(p_definition text, p_unique_key text)
RETURNS SETOF bigint
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
    SELECT j.id FROM {schema}.job j
    WHERE j.definition = p_definition AND j.unique_key = p_unique_key
      AND j.finalized_at IS NULL
$$;

-- What a process that defers (and does not run the definition) writes: the
-- definition's row when it is missing, clamped as definition_upsert clamps;
-- otherwise only a fresh heartbeat. The settings of an existing definition
-- belong to the daemons that carry its code (they upsert them at start).
CREATE FUNCTION {schema}.definition_ensure(
    p_name text, p_channel text, p_num_attempts integer, p_backoff text,
    p_backoff_base_ms bigint, p_backoff_max_ms bigint, p_priority smallint,
    p_repeat_interval_ms bigint, p_cron text, p_release_interval_ms bigint,
    p_max_concurrency integer, p_lock_interval_ms bigint, p_timeout_interval_ms bigint)
RETURNS void
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
    INSERT INTO {schema}.job_definition AS d (
        name, channel, num_attempts, backoff, backoff_base_ms, backoff_max_ms, priority,
        repeat_interval_ms, cron, release_interval_ms, max_concurrency,
        lock_interval_ms, timeout_interval_ms
    ) VALUES (
        p_name, p_channel, greatest(p_num_attempts, 1), p_backoff,
        greatest(p_backoff_base_ms, 0), greatest(p_backoff_max_ms, 0), p_priority,
        CASE WHEN p_repeat_interval_ms IS NULL THEN NULL
             ELSE greatest(p_repeat_interval_ms, 0) END,
        p_cron, greatest(p_release_interval_ms, 0), p_max_concurrency,
        greatest(p_lock_interval_ms, 0), greatest(p_timeout_interval_ms, 0)
    )
    ON CONFLICT (name) DO UPDATE SET last_heartbeat_at = pg_catalog.now()
$$;

-- Whether every dependency of a job has succeeded (true without any). Used by
-- the worker role's row policy on `job`: a worker may release a waiting job
-- only when this holds. A policy cannot query the table it guards, hence a
-- function that reads it as its owner.
CREATE FUNCTION {schema}.job_dependencies_met(p_job_id bigint)
RETURNS boolean
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM {schema}.job_dependency d
        JOIN {schema}.job r ON r.id = d.required_job_id
        WHERE d.job_id = p_job_id AND r.status <> 'succeeded')
$$;

-- Whether the job was created by the calling role. Used by the producer
-- role's row policy on `job_dependency`: a role may add dependencies only to
-- its own jobs (an edge on someone else's waiting job would hold it back, or
-- fail it with its new dependency). SECURITY INVOKER, so current_user is the
-- caller, and VOLATILE on purpose: a volatile function takes a fresh snapshot
-- for its query, which sees the job that the same job_insert statement
-- inserted just before its edges.
CREATE FUNCTION {schema}.job_created_by_caller(p_job_id bigint)
RETURNS boolean
LANGUAGE sql
VOLATILE
SECURITY INVOKER
SET search_path = pg_catalog
AS $$
    SELECT EXISTS (
        SELECT 1 FROM {schema}.job j
        WHERE j.id = p_job_id AND j.created_by = current_user)
$$;

-- A daemon's heartbeat: refresh its row if the secret matches. False when
-- the row is gone (reaped as stale: the daemon registers again) or the
-- secret is not the row's. SECURITY DEFINER: the runtime roles have no
-- UPDATE on `worker` (deploy/sql/roles.sql).
CREATE FUNCTION {schema}.worker_touch(p_worker_id bigint, p_secret text)
RETURNS boolean
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
    WITH touched AS (
        UPDATE {schema}.worker SET heartbeat_at = clock_timestamp()
        WHERE id = p_worker_id AND secret_hash = sha256(convert_to(p_secret, 'UTF8'))
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM touched)
$$;

-- A daemon's deregistration at its stop: delete its row if the secret
-- matches. The runtime roles have no DELETE on `worker`; the orchestrator
-- reaps dead daemons through its own privileges.
CREATE FUNCTION {schema}.worker_deregister(p_worker_id bigint, p_secret text)
RETURNS boolean
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
    WITH deleted AS (
        DELETE FROM {schema}.worker
        WHERE id = p_worker_id AND secret_hash = sha256(convert_to(p_secret, 'UTF8'))
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM deleted)
$$;
