-- 0007_hot_table: finished jobs leave the hot table (docs/decisions/0019).
--
-- `job` keeps only unfinished jobs (waiting, available, running) and only the
-- indexes that claiming, lease rescue and the unique guarantees need. A job
-- that ends (succeeded, failed for good, cancelled) is deleted from `job` by
-- the statement that ends it, which inserts it into `job_history`, together
-- with its attempt log. `job_history` is partitioned by ranges of job ids: a
-- lookup by id (results, dependencies, the management API) reads one
-- partition, and retention drops whole partitions instead of deleting rows
-- one by one and leaving them to vacuum. `job_archive` is folded into it.
--
-- The migration moves every finished job and every archived job into the
-- history in one transaction; unfinished jobs stay where they are, with their
-- ids, attempts and attempt-log rows.

-- The history of finished jobs. Same columns as the hot table's, plus:
--   attempts     the attempt log of every attempt that did not succeed, as
--                JSON objects with the keys of job_attempt's rows; the
--                successful attempt is the row itself (worker_id,
--                worker_name, started_at, finalized_at, lock_token);
--   worker_id, worker_name, lock_token
--                of the attempt that finished the job, when a worker did.
-- A partitioned table's primary key must contain the partition key: it does,
-- the id is both.
CREATE TABLE {schema}.job_history (
    id            bigint      NOT NULL,
    definition    text        NOT NULL,
    channel       text        NOT NULL,
    status        {schema}.job_status NOT NULL
        CHECK (status IN ('succeeded', 'failed', 'cancelled')),
    priority      smallint    NOT NULL,
    payload       jsonb       NOT NULL,
    result        jsonb       NULL,
    attempt       integer     NOT NULL,
    max_attempts  integer     NOT NULL,
    run_at        timestamptz NOT NULL,
    unique_key    text        NULL,
    resource_key  text        NULL,
    tick_at       timestamptz NULL,
    created_at    timestamptz NOT NULL,
    started_at    timestamptz NULL,
    finalized_at  timestamptz NOT NULL,
    last_error    text        NULL,
    attempts      jsonb       NOT NULL DEFAULT '[]',
    trace_context text        NULL,
    created_by    text        NULL,
    worker_id     bigint      NULL,
    worker_name   text        NULL,
    lock_token    uuid        NULL,
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);
-- Recent finishes (the dashboard's throughput), and rows of the default
-- partition past their retention.
CREATE INDEX job_history_finalized_idx ON {schema}.job_history (finalized_at);
-- Ids beyond the partitions made so far land here until the orchestrator's
-- sweeper makes their partition (it moves them in), so a finish never fails
-- for want of a partition.
CREATE TABLE {schema}.job_history_default PARTITION OF {schema}.job_history DEFAULT;

-- The bounds of the history's partitions (not the default one), read from the
-- catalog: NULL for a bound that is not a plain number (MINVALUE, MAXVALUE,
-- a partition made by hand). The callers below run with an empty search_path
-- but for pg_catalog, and name every catalog table in full: a caller's
-- temporary table (pg_temp is searched first for tables) cannot stand in.
CREATE FUNCTION {schema}.job_history_partitions()
RETURNS TABLE (name text, lo bigint, hi bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.relname::text,
           pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                'FROM \(''?(\d+)''?\)')::bigint,
           pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                'TO \(''?(\d+)''?\)')::bigint
    FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = '{schema}.job_history'::pg_catalog.regclass
      AND c.relname <> 'job_history_default'
$$;

-- Make the partitions of the id ranges [floor(p_from / width), p_to), each
-- p_width ids wide, named job_history_<first id>. Rows that the default
-- partition holds in such a range are moved into the new partition: for a
-- range the job ids have reached, under locks that hold finishes back until
-- commit (the caller sets a lock_timeout), so that none lands in the default
-- partition between the move and the attach. Returns how many partitions
-- were made. SECURITY DEFINER: making a partition needs the table's owner,
-- the orchestrator role is not.
CREATE FUNCTION {schema}.job_history_prepare(p_from bigint, p_to bigint, p_width bigint)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    range_lo bigint;
    made integer := 0;
    part text;
    reached bigint;
BEGIN
    IF p_width < 1 THEN
        RAISE EXCEPTION 'job_history_prepare: width must be at least 1, got %', p_width;
    END IF;
    SELECT last_value INTO reached FROM {schema}.job_id_seq;
    range_lo := (greatest(p_from, 0) / p_width) * p_width;
    WHILE range_lo < p_to LOOP
        part := 'job_history_' || range_lo;
        IF to_regclass(format('%s.%I', '{schema}', part)) IS NULL
           AND NOT EXISTS (
               -- a range made with another width may overlap this one
               SELECT 1 FROM {schema}.job_history_partitions() p
               WHERE coalesce(p.lo < range_lo + p_width, true) AND coalesce(p.hi > range_lo, true))
        THEN
            EXECUTE format('CREATE TABLE %s.%I (LIKE {schema}.job_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           '{schema}', part);
            -- Row security with no policy: a role that names the partition
            -- directly sees and changes nothing; through the parent, the
            -- parent's grants and policies apply (deploy/sql/roles.sql).
            EXECUTE format('ALTER TABLE %s.%I ENABLE ROW LEVEL SECURITY', '{schema}', part);
            -- Ids of this range may already exist (give or take the ids taken
            -- while this runs): their finishes may be in the default
            -- partition, and more may arrive until the attach.
            IF range_lo <= reached + p_width THEN
                LOCK TABLE {schema}.job_history IN SHARE ROW EXCLUSIVE MODE;
                LOCK TABLE {schema}.job_history_default IN ACCESS EXCLUSIVE MODE;
                EXECUTE format('WITH moved AS (DELETE FROM {schema}.job_history_default WHERE id >= %s AND id < %s RETURNING *) '
                               'INSERT INTO %s.%I SELECT * FROM moved', range_lo, range_lo + p_width, '{schema}', part);
            END IF;
            EXECUTE format('ALTER TABLE {schema}.job_history ATTACH PARTITION %s.%I FOR VALUES FROM (%s) TO (%s)',
                           '{schema}', part, range_lo, range_lo + p_width);
            made := made + 1;
        END IF;
        range_lo := range_lo + p_width;
    END LOOP;
    RETURN made;
END
$$;

-- Drop, oldest first, up to p_limit history partitions whose every job
-- finished before p_cutoff, with the dependency edges of their jobs; a
-- partition that holds a newer job (a job delayed far ahead, or retried
-- long after) is kept and the next ones are still considered. Never the
-- partition that new ids are given from, nor one above it. A job of a dropped
-- range still unfinished finishes into the default partition later. The
-- decision is checked again under the lock that the drop takes anyway, so a
-- finish into the partition committed meanwhile keeps it. Returns the dropped
-- partitions' names and row counts. SECURITY DEFINER, as above.
CREATE FUNCTION {schema}.job_history_drop_before(p_cutoff timestamptz, p_limit integer)
RETURNS TABLE (partition_name text, jobs bigint)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
    newest timestamptz;
    highest_lo bigint;
    reached bigint;
    n bigint;
    dropped integer := 0;
BEGIN
    SELECT max(parts.lo) INTO highest_lo FROM {schema}.job_history_partitions() parts;
    SELECT last_value INTO reached FROM {schema}.job_id_seq;
    FOR p IN SELECT * FROM {schema}.job_history_partitions() parts ORDER BY parts.lo LOOP
        EXIT WHEN dropped >= p_limit;
        CONTINUE WHEN p.lo IS NULL OR p.hi IS NULL;  -- not one of ours
        EXIT WHEN p.lo >= highest_lo OR reached < p.hi;
        EXECUTE format('SELECT max(finalized_at) FROM %s.%I', '{schema}', p.name) INTO newest;
        CONTINUE WHEN newest >= p_cutoff;
        LOCK TABLE {schema}.job_history IN ACCESS EXCLUSIVE MODE;
        EXECUTE format('SELECT max(finalized_at), count(*) FROM %s.%I', '{schema}', p.name)
            INTO newest, n;
        CONTINUE WHEN newest >= p_cutoff;
        -- Edges of jobs of the range that are still unfinished stay: they
        -- hold those jobs back.
        DELETE FROM {schema}.job_dependency d
        WHERE d.job_id >= p.lo AND d.job_id < p.hi
          AND NOT EXISTS (SELECT 1 FROM {schema}.job j WHERE j.id = d.job_id);
        EXECUTE format('DROP TABLE %s.%I', '{schema}', p.name);
        dropped := dropped + 1;
        partition_name := p.name;
        jobs := n;
        RETURN NEXT;
    END LOOP;
END
$$;

-- These run DDL as the schema's owner: only the roles that deploy/sql/roles.sql
-- grants them to may call them (the orchestrator).
REVOKE EXECUTE ON FUNCTION {schema}.job_history_partitions() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION {schema}.job_history_prepare(bigint, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION {schema}.job_history_drop_before(timestamptz, integer) FROM PUBLIC;

-- Dependency edges and attempt-log rows no longer reference the job table:
-- a job's row leaves it when the job ends, and a foreign key would check (and
-- cascade) row by row in every finishing statement. The finishing statement
-- moves a job's attempt-log rows into its history row itself; edges stay
-- until the history partition of their dependent job is dropped.
ALTER TABLE {schema}.job_attempt DROP CONSTRAINT job_attempt_job_id_fkey;
-- Nor does a job reference its definition by a foreign key: its check locks
-- the definition row FOR KEY SHARE on every insert (a WAL record and a
-- dirtied page per defer, and a multixact when producers overlap), which cost
-- a defer a third of its time. The inserts read the definition row and insert
-- nothing without it; a definition is swept only when it has no job at all.
ALTER TABLE {schema}.job DROP CONSTRAINT job_definition_fkey;
ALTER TABLE {schema}.job_dependency DROP CONSTRAINT job_dependency_job_id_fkey;
ALTER TABLE {schema}.job_dependency DROP CONSTRAINT job_dependency_required_job_id_fkey;

-- Partitions for the id ranges of the finished jobs about to move in (at most
-- the 100 newest ranges: older rows go to the default partition, and leave
-- with the retention) and for the ids about to be given out. Not every range
-- from the oldest job up: one job delayed since id 1 would make thousands,
-- and each holds locks until the migration commits.
SELECT {schema}.job_history_prepare(r.lo, r.lo + 1, 1000000)
FROM (
    SELECT DISTINCT (id / 1000000) * 1000000 AS lo FROM (
        SELECT id FROM {schema}.job WHERE status IN ('succeeded', 'failed', 'cancelled')
        UNION ALL
        SELECT id FROM {schema}.job_archive
    ) finished
    ORDER BY lo DESC
    LIMIT 100
) r;
SELECT {schema}.job_history_prepare(
    (SELECT last_value FROM {schema}.job_id_seq),
    (SELECT last_value FROM {schema}.job_id_seq) + 2000000,
    1000000);

-- Archived jobs: their attempt log is already JSON. Those archived without a
-- worker of record keep NULLs.
INSERT INTO {schema}.job_history (
    id, definition, channel, status, priority, payload, result, attempt, max_attempts, run_at,
    unique_key, resource_key, tick_at, created_at, started_at, finalized_at, last_error,
    attempts, trace_context, created_by)
SELECT id, definition, channel, status, priority, payload, result, attempt, max_attempts, run_at,
       unique_key, resource_key, tick_at, created_at, started_at, finalized_at, last_error,
       attempts, trace_context, created_by
FROM {schema}.job_archive;
DROP TABLE {schema}.job_archive;

-- Finished jobs of the hot table, with their attempt log (every attempt,
-- the successful one included, as the rows were written before).
WITH moved AS (
    DELETE FROM {schema}.job j
    WHERE j.status IN ('succeeded', 'failed', 'cancelled')
    RETURNING j.*
)
INSERT INTO {schema}.job_history (
    id, definition, channel, status, priority, payload, result, attempt, max_attempts, run_at,
    unique_key, resource_key, tick_at, created_at, started_at, finalized_at, last_error,
    attempts, trace_context, created_by)
SELECT m.id, m.definition, m.channel, m.status, m.priority, m.payload, m.result, m.attempt,
       m.max_attempts, m.run_at, m.unique_key, m.resource_key, m.tick_at, m.created_at,
       m.started_at, m.finalized_at, m.last_error,
       coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                 FROM {schema}.job_attempt a WHERE a.job_id = m.id), '[]'::jsonb),
       m.trace_context, m.created_by
FROM moved m;
DELETE FROM {schema}.job_attempt a
WHERE NOT EXISTS (SELECT 1 FROM {schema}.job j WHERE j.id = a.job_id);

-- A succeeded job's history row is the record of its successful attempt:
-- the log rows written for successes before this migration are folded into
-- the row's worker columns, as a finish writes them from now on.
UPDATE {schema}.job_history h
SET worker_id = (h.attempts -> -1 ->> 'worker_id')::bigint,
    worker_name = h.attempts -> -1 ->> 'worker_name',
    lock_token = (h.attempts -> -1 ->> 'lock_token')::uuid,
    attempts = h.attempts - -1
WHERE h.status = 'succeeded' AND h.attempts -> -1 ->> 'outcome' = 'succeeded';

-- The hot table now holds unfinished jobs only, and says so.
ALTER TABLE {schema}.job DROP CONSTRAINT job_check;
ALTER TABLE {schema}.job ADD CONSTRAINT job_unfinished_check
    CHECK (status IN ('waiting', 'available', 'running') AND finalized_at IS NULL AND result IS NULL);

-- Indexes the hot table no longer needs. Each one costs an entry per status
-- change of every job (a status change is never a HOT update: status is in
-- the claim index's predicate).
DROP INDEX {schema}.job_finalized_idx;          -- no finished rows
DROP INDEX {schema}.job_definition_idx;         -- listing by definition scans the (small) hot table
DROP INDEX {schema}.job_unfinished_run_at_idx;  -- timeouts scan the hot table
DROP INDEX {schema}.job_unfinished_tick_idx;    -- job_tick_uniq serves the overlap check
DROP INDEX {schema}.job_running_idx;            -- lease expiry reads job_locked_by_idx
-- Every row is unfinished: the unique key's predicate loses its finalized_at.
DROP INDEX {schema}.job_unique_key_uniq;
CREATE UNIQUE INDEX job_unique_key_uniq ON {schema}.job (definition, unique_key)
    WHERE unique_key IS NOT NULL;

-- The hot table's rows are now short-lived: deleted, not updated, at the end.
-- The room left on each page serves the updates that can be HOT, those that
-- change no indexed column (nor one that a partial index's WHERE clause
-- reads): with job_running_idx gone, the lease extension (locked_until only)
-- and the retry of an available job that keeps its `limited` flag (run_at
-- only). Every status change still writes new index entries.
ALTER TABLE {schema}.job SET (fillfactor = 90);

-- Functions of 0006 that read a dependency's status: a dependency has
-- succeeded when its history row says so.
CREATE OR REPLACE FUNCTION {schema}.job_recheck_waiting(p_job_id bigint, p_notify_channel text)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
DECLARE
    woken bigint;
BEGIN
    -- Wait for a finish in flight on a dependency (it holds the row until it
    -- commits, and deletes it), and make a later finish wait for us.
    -- In id order, as a worker's finish locks the rows of its batch, so that
    -- the two meet in the same order.
    PERFORM 1 FROM {schema}.job j
    WHERE j.id IN (SELECT d.required_job_id FROM {schema}.job_dependency d
                   WHERE d.job_id = p_job_id)
    ORDER BY j.id
    FOR SHARE;
    -- A new statement, so a new snapshot: it sees the history rows of the
    -- finishes waited for above.
    WITH released AS (
        UPDATE {schema}.job j SET status = 'available'
        WHERE j.id = p_job_id AND j.status = 'waiting'
          AND {schema}.job_dependencies_met(p_job_id)
        RETURNING j.channel
    )
    SELECT count(pg_catalog.pg_notify(p_notify_channel, released.channel)) INTO woken FROM released;
    RETURN woken;
END
$$;

CREATE OR REPLACE FUNCTION {schema}.job_find_unique(p_definition text, p_unique_key text)
RETURNS SETOF bigint
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
    SELECT j.id FROM {schema}.job j
    WHERE j.definition = p_definition AND j.unique_key = p_unique_key
$$;

CREATE OR REPLACE FUNCTION {schema}.job_dependencies_met(p_job_id bigint)
RETURNS boolean
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM {schema}.job_dependency d
        WHERE d.job_id = p_job_id
          AND NOT EXISTS (SELECT 1 FROM {schema}.job_history h
                          WHERE h.id = d.required_job_id AND h.status = 'succeeded'))
$$;

-- Every job, unfinished or finished, and every ended attempt, for reading
-- with plain SQL (operators, reports, tests): a job is in exactly one of the
-- two tables at any snapshot. security_invoker: a reader sees through a view
-- only the rows its own privileges and row policies let it see.
-- lock_token and locked_by are those of the attempt running now (NULL once
-- the job has finished).
CREATE VIEW {schema}.all_jobs WITH (security_invoker = true) AS
SELECT j.id, j.definition, j.channel, j.status, j.priority, j.payload, j.result, j.attempt,
       j.max_attempts, j.run_at, j.unique_key, j.resource_key, j.tick_at, j.created_at,
       j.started_at, j.finalized_at, j.last_error, j.trace_context, j.created_by,
       j.locked_by, j.lock_token, j.locked_until, false AS finished
FROM {schema}.job j
UNION ALL
SELECT h.id, h.definition, h.channel, h.status, h.priority, h.payload, h.result, h.attempt,
       h.max_attempts, h.run_at, h.unique_key, h.resource_key, h.tick_at, h.created_at,
       h.started_at, h.finalized_at, h.last_error, h.trace_context, h.created_by,
       NULL::bigint, NULL::uuid, NULL::timestamptz, true
FROM {schema}.job_history h;

-- The attempt log of every job: log rows of unfinished jobs, the JSON log of
-- finished ones, and the successful attempt that a succeeded job's history
-- row records. id is the log row's, NULL for an attempt that ended its job
-- (it went straight into the history, with no log row of its own).
CREATE VIEW {schema}.all_job_attempts WITH (security_invoker = true) AS
SELECT a.id, a.job_id, a.attempt, a.worker_id, a.worker_name, a.started_at, a.finished_at,
       a.outcome, a.error, a.traceback, a.lock_token
FROM {schema}.job_attempt a
UNION ALL
SELECT (e ->> 'id')::bigint, h.id, (e ->> 'attempt')::integer, (e ->> 'worker_id')::bigint,
       e ->> 'worker_name', (e ->> 'started_at')::timestamptz,
       (e ->> 'finished_at')::timestamptz, e ->> 'outcome', e ->> 'error', e ->> 'traceback',
       (e ->> 'lock_token')::uuid
FROM {schema}.job_history h CROSS JOIN LATERAL jsonb_array_elements(h.attempts) AS e
UNION ALL
SELECT NULL, h.id, h.attempt, h.worker_id, h.worker_name, h.started_at, h.finalized_at,
       'succeeded', NULL, NULL, h.lock_token
FROM {schema}.job_history h
WHERE h.status = 'succeeded';
