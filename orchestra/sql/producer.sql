-- Queries of producers: defer (orchestra/_defer.py) and what a job's handle
-- reads afterwards (orchestra/_results.py: its status, and its outcome for a
-- result waiter).
--
-- Notifications: one pg_notify per statement and job channel on the schema's
-- wake-up channel. PostgreSQL folds identical notifications of one transaction
-- into one, so a transaction that defers many jobs wakes workers once.

-- name: definition_ensure
-- What defer writes (JobDefinition._ensure, and again when an insert finds
-- the definition missing): the row when it is missing, otherwise a fresh
-- heartbeat only. The settings of an existing definition belong to the
-- daemons that carry its code (definition_upsert at their start), so that a
-- producer, which may hold an older or a different copy of them, never
-- changes a lease or a limit under running jobs. A SECURITY DEFINER function
-- (schemas/0006_least_privilege.sql): producer roles need no write privilege
-- on job_definition.
SELECT {schema}.definition_ensure(
    %(name)s::text, %(channel)s::text, %(num_attempts)s::integer, %(backoff)s::text,
    %(backoff_base_ms)s::bigint, %(backoff_max_ms)s::bigint, %(priority)s::smallint,
    %(repeat_interval_ms)s::bigint, %(cron)s::text, %(release_interval_ms)s::bigint,
    %(max_concurrency)s::integer, %(lock_interval_ms)s::bigint, %(timeout_interval_ms)s::bigint);

-- name: job_insert
-- Defer one job. Dependencies must all exist and be visible to the caller (a
-- producer role sees only the jobs it created, decision 0018), unfinished in
-- the hot table or finished in the history; if any is missing nothing is
-- inserted and no row comes back. A job with a dependency that has not
-- succeeded waits. A dependency that finishes between this statement's
-- snapshot and its commit is caught by job_recheck_waiting, which the caller
-- runs after a defer that came back waiting (decision 0007). The history
-- keeps a finished dependency for the retention period: a dependency dropped
-- from it meanwhile counts as unmet (the finalizer fails the job).
-- With a unique_key, the unique index decides, race-free: when an unfinished
-- job of the definition holds the key, nothing is inserted and no row comes
-- back either (the caller then looks the holder up: job_find_unique). A job
-- with a resource_key is `limited`: only the keyed claim branch takes it.
WITH deps AS MATERIALIZED (
    SELECT id, status FROM {schema}.job
    WHERE id = ANY(%(depends_on)s::bigint[])
    UNION ALL
    -- One look-up per id, so that each reads one partition (= ANY over a
    -- partitioned table reads them all under a generic plan).
    SELECT h.id, h.status FROM unnest(%(depends_on)s::bigint[]) AS wanted(id)
    CROSS JOIN LATERAL (SELECT id, status FROM {schema}.job_history
                        WHERE id = wanted.id) h
), inserted AS (
    INSERT INTO {schema}.job (definition, channel, status, priority, payload, max_attempts, run_at,
                              unique_key, resource_key, limited, trace_context, tags, meta)
    SELECT %(definition)s, %(channel)s,
           CASE WHEN bool_and(deps.status = 'succeeded') IS NOT FALSE
                THEN 'available' ELSE 'waiting' END::{schema}.job_status,
           %(priority)s, %(payload)s::jsonb, %(max_attempts)s,
           coalesce(%(run_at)s::timestamptz, now() + %(delay_ms)s * interval '1 millisecond'),
           %(unique_key)s, %(resource_key)s,
           %(resource_key)s::text IS NOT NULL
           OR coalesce((SELECT release_interval_ms > 0 OR max_concurrency IS NOT NULL
                        FROM {schema}.job_definition WHERE name = %(definition)s), false),
           %(trace_context)s::text, %(tags)s::text[], %(meta)s::jsonb
    FROM deps
    HAVING count(*) = cardinality(%(depends_on)s::bigint[])
       -- Nothing without the definition row (see job_insert_simple).
       AND EXISTS (SELECT 1 FROM {schema}.job_definition WHERE name = %(definition)s)
    ON CONFLICT (definition, unique_key) WHERE unique_key IS NOT NULL
    DO NOTHING
    RETURNING id, status
), edges AS (
    INSERT INTO {schema}.job_dependency (job_id, required_job_id)
    SELECT inserted.id, dep FROM inserted, unnest(%(depends_on)s::bigint[]) AS dep
)
SELECT inserted.id, inserted.status::text, pg_notify(%(notify_channel)s, %(channel)s) FROM inserted;

-- name: job_insert_simple
-- job_insert for the common case, a job without dependencies: one plain
-- INSERT (no CTEs, no aggregate over dependencies), about 1.5x as fast on
-- the bench. Same columns, same unique-key rule, same wake-up. The job
-- table has no foreign key to job_definition (its check locked the
-- definition row on every insert: a third of a defer's cost); the insert
-- reads the row instead and inserts nothing without it.
INSERT INTO {schema}.job (definition, channel, priority, payload, max_attempts, run_at,
                          unique_key, resource_key, limited, trace_context, tags, meta)
SELECT %(definition)s, %(channel)s, %(priority)s, %(payload)s::jsonb, %(max_attempts)s,
       coalesce(%(run_at)s::timestamptz, now() + %(delay_ms)s * interval '1 millisecond'),
       %(unique_key)s, %(resource_key)s,
       %(resource_key)s::text IS NOT NULL
       OR d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL,
       %(trace_context)s::text, %(tags)s::text[], %(meta)s::jsonb
FROM {schema}.job_definition d
WHERE d.name = %(definition)s
ON CONFLICT (definition, unique_key) WHERE unique_key IS NOT NULL
DO NOTHING
RETURNING id, status::text, pg_notify(%(notify_channel)s, %(channel)s);

-- name: definition_exists
-- After an insert that inserted nothing: was it for want of the definition?
SELECT EXISTS (SELECT 1 FROM {schema}.job_definition WHERE name = %(name)s);

-- name: job_find_unique
-- The id of the unfinished job that holds a unique key (after job_insert
-- inserted nothing). A separate statement: its snapshot sees the holder that
-- the insert waited for and found committed. Through a function: the holder
-- may belong to another producer role, whose rows this one cannot read.
SELECT id FROM {schema}.job_find_unique(%(definition)s, %(unique_key)s) AS holder(id);

-- name: job_ids_existing
-- Which of the given ids exist (to name the missing ones in an error).
SELECT id FROM {schema}.job WHERE id = ANY(%(ids)s::bigint[])
UNION ALL
SELECT h.id FROM unnest(%(ids)s::bigint[]) AS wanted(id)
CROSS JOIN LATERAL (SELECT id FROM {schema}.job_history WHERE id = wanted.id) h;

-- name: job_recheck_waiting
-- After a defer that came back waiting has committed: lock its dependencies
-- FOR SHARE (which waits for a finish in flight on them, and makes a later
-- finish wait for us) and release the job if they have all succeeded. Rows
-- returned by a locking read are their latest committed versions. A SECURITY
-- DEFINER function (schemas/0006_least_privilege.sql), so that producers need
-- no UPDATE on jobs: the function releases the job only when every dependency
-- succeeded, whoever calls it.
SELECT {schema}.job_recheck_waiting(%(id)s, %(notify_channel)s);

-- name: job_insert_many
-- Defer many jobs of one definition in one statement, in the order given.
-- One trace_context for the whole batch (the producer's current span), and
-- one set of tags and meta (defer_many's options apply to every job).
WITH inserted AS (
    INSERT INTO {schema}.job (definition, channel, priority, payload, max_attempts, run_at,
                              resource_key, limited, trace_context, tags, meta)
    SELECT %(definition)s, %(channel)s, %(priority)s, p.payload::jsonb, %(max_attempts)s,
           coalesce(%(run_at)s::timestamptz, now() + %(delay_ms)s * interval '1 millisecond'),
           %(resource_key)s,
           %(resource_key)s::text IS NOT NULL
           OR d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL,
           %(trace_context)s::text, %(tags)s::text[], %(meta)s::jsonb
    FROM unnest(%(payloads)s::text[]) WITH ORDINALITY AS p(payload, n)
    -- Nothing without the definition row (see job_insert_simple).
    JOIN {schema}.job_definition d ON d.name = %(definition)s
    ORDER BY p.n
    RETURNING id
)
SELECT coalesce(array_agg(id ORDER BY id), '{{}}') AS ids,
       (SELECT pg_notify(%(notify_channel)s, %(channel)s)) AS notified
FROM inserted;

-- name: job_status
-- `scheduled`: available with a run_at still ahead (decision 0036).
SELECT CASE WHEN status = 'available' AND run_at > now() THEN 'scheduled' ELSE status::text END
       AS status
FROM {schema}.job WHERE id = %(id)s
UNION ALL
SELECT status::text FROM {schema}.job_history WHERE id = %(id)s;

-- name: job_outcome
-- What a result waiter needs: a job is in exactly one of the two tables.
SELECT status::text, NULL::jsonb AS result, last_error FROM {schema}.job WHERE id = %(id)s
UNION ALL
SELECT status::text, result, last_error FROM {schema}.job_history WHERE id = %(id)s;

-- name: job_progress
-- What a job's running attempt last reported (JobHandle.progress), from
-- whichever table holds it: the history keeps the last value.
SELECT progress::text FROM {schema}.job WHERE id = %(id)s
UNION ALL
SELECT progress::text FROM {schema}.job_history WHERE id = %(id)s;
