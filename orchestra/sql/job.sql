-- Queries on job, job_dependency and job_attempt that producers and workers run.
-- Notifications: one pg_notify per statement and job channel on the schema's
-- wake-up channel. PostgreSQL folds identical notifications of one transaction
-- into one, so a transaction that defers many jobs wakes workers once.

-- name: job_insert
-- Defer one job. Dependencies must all exist and be visible to the caller (a
-- producer role sees only the jobs it created, decision 0018); if any is
-- missing nothing is inserted and no row comes back. A job with an unfinished
-- dependency waits. The foreign key check of each new edge locks its
-- dependency FOR KEY SHARE until commit, so that a sweep cannot delete it
-- meanwhile (job_lock_sweepable skips it); a dependency swept between this
-- statement's snapshot and that lock fails the statement with a foreign key
-- violation on job_dependency. The dependencies are not locked here: a
-- locking read needs UPDATE on the job table, which producers do not have.
-- With a unique_key, the unique index decides, race-free: when an unfinished
-- job of the definition holds the key, nothing is inserted and no row comes
-- back either (the caller then looks the holder up: job_find_unique). A job
-- with a resource_key is `limited`: only the keyed claim branch takes it.
WITH deps AS MATERIALIZED (
    SELECT id, status FROM {schema}.job
    WHERE id = ANY(%(depends_on)s::bigint[])
), inserted AS (
    INSERT INTO {schema}.job (definition, channel, status, priority, payload, max_attempts, run_at,
                              unique_key, resource_key, limited, trace_context)
    SELECT %(definition)s, %(channel)s,
           CASE WHEN bool_and(deps.status = 'succeeded') IS NOT FALSE
                THEN 'available' ELSE 'waiting' END::{schema}.job_status,
           %(priority)s, %(payload)s::jsonb, %(max_attempts)s,
           coalesce(%(run_at)s::timestamptz, now() + %(delay_ms)s * interval '1 millisecond'),
           %(unique_key)s, %(resource_key)s,
           %(resource_key)s::text IS NOT NULL
           OR coalesce((SELECT release_interval_ms > 0 OR max_concurrency IS NOT NULL
                        FROM {schema}.job_definition WHERE name = %(definition)s), false),
           %(trace_context)s::text
    FROM deps
    HAVING count(*) = cardinality(%(depends_on)s::bigint[])
    ON CONFLICT (definition, unique_key) WHERE unique_key IS NOT NULL AND finalized_at IS NULL
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
-- the bench. Same columns, same unique-key rule, same wake-up.
INSERT INTO {schema}.job (definition, channel, priority, payload, max_attempts, run_at,
                          unique_key, resource_key, limited, trace_context)
VALUES (%(definition)s, %(channel)s, %(priority)s, %(payload)s::jsonb, %(max_attempts)s,
        coalesce(%(run_at)s::timestamptz, now() + %(delay_ms)s * interval '1 millisecond'),
        %(unique_key)s, %(resource_key)s,
        %(resource_key)s::text IS NOT NULL
        OR coalesce((SELECT release_interval_ms > 0 OR max_concurrency IS NOT NULL
                     FROM {schema}.job_definition WHERE name = %(definition)s), false),
        %(trace_context)s::text)
ON CONFLICT (definition, unique_key) WHERE unique_key IS NOT NULL AND finalized_at IS NULL
DO NOTHING
RETURNING id, status::text, pg_notify(%(notify_channel)s, %(channel)s);

-- name: job_find_unique
-- The id of the unfinished job that holds a unique key (after job_insert
-- inserted nothing). A separate statement: its snapshot sees the holder that
-- the insert waited for and found committed. Through a function: the holder
-- may belong to another producer role, whose rows this one cannot read.
SELECT id FROM {schema}.job_find_unique(%(definition)s, %(unique_key)s) AS holder(id);

-- name: job_insert_many
-- Defer many jobs of one definition in one statement, in the order given.
-- One trace_context for the whole batch (the producer's current span).
WITH inserted AS (
    INSERT INTO {schema}.job (definition, channel, priority, payload, max_attempts, run_at,
                              resource_key, limited, trace_context)
    SELECT %(definition)s, %(channel)s, %(priority)s, p.payload::jsonb, %(max_attempts)s,
           coalesce(%(run_at)s::timestamptz, now() + %(delay_ms)s * interval '1 millisecond'),
           %(resource_key)s,
           %(resource_key)s::text IS NOT NULL
           OR coalesce((SELECT release_interval_ms > 0 OR max_concurrency IS NOT NULL
                        FROM {schema}.job_definition WHERE name = %(definition)s), false),
           %(trace_context)s::text
    FROM unnest(%(payloads)s::text[]) WITH ORDINALITY AS p(payload, n)
    ORDER BY p.n
    RETURNING id
)
SELECT coalesce(array_agg(id ORDER BY id), '{{}}') AS ids,
       (SELECT pg_notify(%(notify_channel)s, %(channel)s)) AS notified
FROM inserted;

-- name: job_claim
-- Claim up to %(limit)s runnable jobs of a channel: higher priority first,
-- then FIFO. SKIP LOCKED lets concurrent workers take disjoint batches. The
-- lock is NO KEY UPDATE, which does not conflict with the KEY SHARE lock that
-- an open defer(depends_on=...) holds on its dependencies; the
-- MATERIALIZED CTEs make the LIMIT apply before the UPDATE, so a worker never
-- gets more rows than it asked for. Each claim counts as an attempt.
--
-- Two branches: `plain` serves jobs without limits from job_claim_idx; `keyed`
-- serves resource-keyed jobs of unlimited definitions, taking a job only if it
-- heads its key (per channel) and no job of its key runs: at most one running
-- job per resource key, fleet-wide. A job held back by its key is simply not
-- taken: it spends nothing and nobody spins on it.
-- When no keyed job exists the keyed branch is an empty partial index scan.
-- Two workers can still race on one key from different channels: the unique
-- index job_resource_running_uniq then refuses the second UPDATE and the
-- worker claims again (its new snapshot sees the winner running).
--
-- The payload comes back as text: the worker decodes it in the job's own
-- attempt, so that a payload Python cannot decode (nested too deeply) fails
-- that job alone, not the whole claimed batch.
--
-- Lock tokens are derived from %(claim_id)s, a UUID the worker makes for
-- this statement, and the job id: if the connection breaks before the rows
-- come back, the worker finds the jobs this claim took (job_claim_recover)
-- instead of leaving them running until their lease expires. A token is a
-- fence, not a secret.
--
-- A claim's commit waits for the WAL flush, as every commit of the server's
-- settings does: a claim that a crash could forget while its worker already
-- runs the job would let a second worker run it at the same time (decision
-- 0015, amended).
WITH plain AS MATERIALIZED (
    SELECT id, priority FROM {schema}.job
    WHERE status = 'available' AND NOT limited AND channel = %(channel)s
      AND run_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), keyed AS MATERIALIZED (
    SELECT j.id, j.priority FROM {schema}.job j
    WHERE j.status = 'available' AND j.resource_key IS NOT NULL AND j.channel = %(channel)s
      AND j.run_at <= coalesce(%(now)s::timestamptz, now())
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job r
          WHERE r.resource_key = j.resource_key AND r.status = 'running')
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job o
          WHERE o.resource_key = j.resource_key AND o.channel = j.channel
            AND o.status = 'available' AND o.run_at <= coalesce(%(now)s::timestamptz, now())
            AND (o.priority > j.priority OR (o.priority = j.priority AND o.id < j.id)))
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job_definition d
          WHERE d.name = j.definition
            AND (d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL))
    ORDER BY j.priority DESC, j.id
    LIMIT %(limit)s
    FOR NO KEY UPDATE OF j SKIP LOCKED
), claimable AS (
    SELECT id FROM (SELECT * FROM plain UNION ALL SELECT * FROM keyed) c
    ORDER BY priority DESC, id
    LIMIT %(limit)s
)
UPDATE {schema}.job j
SET status = 'running',
    attempt = j.attempt + 1,
    locked_by = %(worker_id)s,
    lock_token = md5(%(claim_id)s || j.id::text)::uuid,
    locked_until = clock_timestamp() + d.lock_interval_ms * interval '1 millisecond',
    started_at = clock_timestamp()
FROM claimable c, {schema}.job_definition d
WHERE j.id = c.id AND d.name = j.definition
RETURNING j.id, j.definition, j.payload::text, j.attempt, j.max_attempts, j.lock_token,
          j.started_at, j.run_at, j.priority, j.trace_context;

-- name: definition_lock_limited
-- First statement of the guarded claim: lock the limited definitions this
-- worker serves (SKIP LOCKED: one another worker is releasing is skipped, not
-- waited for). The claim itself must be a second statement, so that its
-- snapshot is taken after the lock was granted and sees the claims of the
-- worker that held it before (a count of running jobs read in the same
-- statement could predate them).
SELECT name FROM {schema}.job_definition
WHERE name = ANY(%(definitions)s::text[])
  AND (release_interval_ms > 0 OR max_concurrency IS NOT NULL)
FOR NO KEY UPDATE SKIP LOCKED;

-- name: job_claim_limited
-- Second statement of the guarded claim, in the same transaction, over the
-- definitions locked by definition_lock_limited: the limits are checked and
-- last_released_at set on one clock reading, so that starts are spaced by the
-- release interval fleet-wide, retries included, and running jobs never
-- exceed max_concurrency. Jobs held back spend nothing.
WITH t AS MATERIALIZED (
    SELECT clock_timestamp() AS ts
), defs AS MATERIALIZED (
    SELECT d.name, d.release_interval_ms, d.max_concurrency
    FROM {schema}.job_definition d, t
    WHERE d.name = ANY(%(definitions)s::text[])
      AND (d.release_interval_ms = 0 OR d.last_released_at IS NULL
           OR d.last_released_at + d.release_interval_ms * interval '1 millisecond' <= t.ts)
), budget AS MATERIALIZED (
    SELECT defs.name,
           least(CASE WHEN defs.release_interval_ms > 0 THEN 1 ELSE %(limit)s END,
                 coalesce(defs.max_concurrency - (
                     SELECT count(*) FROM {schema}.job r
                     WHERE r.definition = defs.name AND r.status = 'running'), %(limit)s)) AS n
    FROM defs
), picked AS MATERIALIZED (
    SELECT j.id, j.definition FROM budget b
    CROSS JOIN LATERAL (
        SELECT id, definition FROM {schema}.job
        WHERE definition = b.name AND status = 'available' AND limited
          AND run_at <= (SELECT ts FROM t)
          -- Resource keys (at most one running job per key), as in job_claim's
          -- keyed branch.
          AND (resource_key IS NULL OR (
              NOT EXISTS (
                  SELECT 1 FROM {schema}.job r
                  WHERE r.resource_key = job.resource_key AND r.status = 'running')
              AND NOT EXISTS (
                  SELECT 1 FROM {schema}.job o
                  WHERE o.resource_key = job.resource_key AND o.channel = job.channel
                    AND o.status = 'available' AND o.run_at <= (SELECT ts FROM t)
                    AND (o.priority > job.priority
                         OR (o.priority = job.priority AND o.id < job.id)))))
        ORDER BY priority DESC, id
        LIMIT greatest(b.n, 0)
        FOR NO KEY UPDATE SKIP LOCKED
    ) j
    LIMIT %(limit)s
), released AS (
    UPDATE {schema}.job_definition d SET last_released_at = (SELECT ts FROM t)
    WHERE d.name IN (SELECT definition FROM picked) AND d.release_interval_ms > 0
)
UPDATE {schema}.job j
SET status = 'running',
    attempt = j.attempt + 1,
    locked_by = %(worker_id)s,
    lock_token = md5(%(claim_id)s || j.id::text)::uuid,
    locked_until = (SELECT ts FROM t) + d.lock_interval_ms * interval '1 millisecond',
    started_at = (SELECT ts FROM t)
FROM picked p, {schema}.job_definition d
WHERE j.id = p.id AND d.name = j.definition
RETURNING j.id, j.definition, j.payload::text, j.attempt, j.max_attempts, j.lock_token,
          j.started_at, j.run_at, j.priority, j.trace_context;

-- name: job_finish_many
-- Record the end of many attempts in one statement. Each row is fenced by
-- (id, attempt, lock_token): an attempt that was rescued or finalized
-- meanwhile changes nothing and is simply not returned. Outcomes:
--   succeeded    -> succeeded, result stored, finalized
--   failed       -> available after retry_delay_ms while attempts remain, else failed
--   interrupted  -> like failed (the worker stopped before the job finished)
--   timed_out    -> like failed (the attempt ran past attempt_timeout_ms)
--   released     -> available after retry_delay_ms, attempt refunded, no log row
-- The release of dependents is job_release_dependents, run right after it
-- in the same pipeline (see there why it must be a second statement).
-- The arrays are sent in binary format: text arrays are quoted element by
-- element in Python, which was the largest cost per finished job in a profile.
WITH input AS (
    SELECT * FROM unnest(
        %(ids)b::bigint[], %(attempts)b::integer[], %(tokens)b::uuid[], %(outcomes)b::text[],
        %(results)b::text[]::jsonb[], %(errors)b::text[], %(tracebacks)b::text[],
        %(retry_delays_ms)b::bigint[], %(started_ats)b::timestamptz[]
    ) AS i(id, attempt, token, outcome, result, error, traceback, retry_delay_ms, started_at)
), finished AS (
    UPDATE {schema}.job j
    SET status = CASE
            WHEN i.outcome = 'succeeded' THEN 'succeeded'
            WHEN i.outcome = 'released' OR j.attempt < j.max_attempts THEN 'available'
            ELSE 'failed'
        END::{schema}.job_status,
        attempt = CASE WHEN i.outcome = 'released' THEN j.attempt - 1 ELSE j.attempt END,
        result = CASE WHEN i.outcome = 'succeeded' THEN i.result ELSE j.result END,
        last_error = CASE WHEN i.outcome IN ('failed', 'interrupted', 'timed_out')
                          THEN i.error ELSE j.last_error END,
        run_at = CASE
            WHEN i.outcome = 'succeeded' THEN j.run_at
            ELSE clock_timestamp() + i.retry_delay_ms * interval '1 millisecond'
        END,
        finalized_at = CASE
            WHEN i.outcome = 'succeeded' THEN clock_timestamp()
            WHEN i.outcome IN ('failed', 'interrupted', 'timed_out') AND j.attempt >= j.max_attempts
                THEN clock_timestamp()
        END,
        locked_by = NULL, lock_token = NULL, locked_until = NULL
    FROM input i
    -- A lock token is set exactly while the job runs (a CHECK says so), so
    -- the token match is the status check. Spelling out status = 'running'
    -- made the planner bitmap-scan the running jobs' index (3,050 entries,
    -- mostly dead, to find 50 rows on a busy table) instead of looking the
    -- ids up in the primary key.
    WHERE j.id = i.id AND j.attempt = i.attempt AND j.lock_token = i.token
    RETURNING j.id, j.status, j.run_at, j.channel, j.resource_key
), logged AS (
    INSERT INTO {schema}.job_attempt
        (job_id, attempt, worker_id, worker_name, started_at, outcome, error, traceback,
         lock_token)
    SELECT i.id, i.attempt, %(worker_id)s, %(worker_name)s, i.started_at, i.outcome,
           i.error, i.traceback, i.token
    FROM input i JOIN finished f ON f.id = i.id
    WHERE i.outcome <> 'released'
), woken AS (
    -- Retries are runnable again, and a freed resource key lets the next job
    -- of that key run, on whatever channel it waits: wake each channel once.
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT channel FROM finished WHERE status = 'available'
          UNION
          SELECT w.channel FROM {schema}.job w
          WHERE w.status = 'available'
            AND w.resource_key IN (SELECT resource_key FROM finished
                                   WHERE resource_key IS NOT NULL)) c
), done AS (
    -- Result waiters (JobHandle.result): one notification per statement
    -- listing the finalized ids, or empty when the list would not fit in a
    -- notification payload (8000 bytes): every waiter then looks itself up.
    SELECT count(pg_notify(%(finished_channel)s, CASE WHEN length(ids) < 7900 THEN ids ELSE '' END)) AS n
    FROM (SELECT string_agg(id::text, ',') AS ids FROM finished
          WHERE status IN ('succeeded', 'failed')) f
    WHERE ids IS NOT NULL
)
SELECT f.id, f.status::text AS status, f.run_at, (SELECT n FROM woken) AS woken,
       (SELECT n FROM done) AS done
FROM finished f;

-- name: job_claim_recover
-- The jobs that a claim of this worker took, when its connection broke before
-- the claimed rows came back (the commit may or may not have happened): the
-- lock tokens derive from the claim's %(claim_id)s (see job_claim).
SELECT j.id, j.definition, j.payload::text, j.attempt, j.max_attempts, j.lock_token,
       j.started_at, j.run_at, j.priority, j.trace_context
FROM {schema}.job j
WHERE j.status = 'running' AND j.locked_by = %(worker_id)s
  AND j.lock_token = md5(%(claim_id)s || j.id::text)::uuid;

-- name: job_finish_recorded
-- Which of the given finishes are recorded, when the connection broke before
-- job_finish_many's rows came back: an attempt row with the attempt's lock
-- token exists exactly when its finish committed. Returns, per recorded
-- finish, when it was recorded (the retry's run_at is counted from there). A
-- released job writes no attempt row: its attempt was refunded and its token
-- cleared, which its row shows until it is claimed again.
SELECT i.id, a.finished_at
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(tokens)s::uuid[], %(outcomes)s::text[])
     AS i(id, attempt, token, outcome)
JOIN LATERAL (
    SELECT a.finished_at FROM {schema}.job_attempt a
    WHERE i.outcome <> 'released'
      AND a.job_id = i.id AND a.attempt = i.attempt AND a.lock_token = i.token
    UNION ALL
    SELECT j.run_at FROM {schema}.job j
    WHERE i.outcome = 'released'
      AND j.id = i.id AND j.attempt = i.attempt - 1 AND j.status = 'available'
    LIMIT 1
) a ON true;

-- name: job_release_dependents
-- Make available the waiting dependents of the given (just succeeded) jobs
-- whose dependencies have all succeeded, and wake their channels. Runs as a
-- second statement right after job_finish_many (pipelined, so no extra round
-- trip): the first one locked the finished rows, waiting for any defer that was
-- re-checking them, and committed, so this statement's fresh snapshot sees
-- every dependent committed before that. Ids whose finish was refused are
-- harmless: their dependents still have an unsucceeded dependency.
WITH released AS (
    UPDATE {schema}.job w SET status = 'available'
    WHERE w.status = 'waiting'
      AND w.id IN (SELECT d.job_id FROM {schema}.job_dependency d
                   WHERE d.required_job_id = ANY(%(ids)s::bigint[]))
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job_dependency d
          JOIN {schema}.job r ON r.id = d.required_job_id
          WHERE d.job_id = w.id AND r.status <> 'succeeded')
    RETURNING w.id, w.channel
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM released) c
)
SELECT id, (SELECT n FROM woken) FROM released;

-- name: job_recheck_waiting
-- After a defer that came back waiting has committed: lock its dependencies
-- FOR SHARE (which waits for a finish in flight on them, and makes a later
-- finish wait for us) and release the job if they have all succeeded. Rows
-- returned by a locking read are their latest committed versions. A SECURITY
-- DEFINER function (schemas/0006_least_privilege.sql), so that producers need
-- no UPDATE on jobs: the function releases the job only when every dependency
-- succeeded, whoever calls it.
SELECT {schema}.job_recheck_waiting(%(id)s, %(notify_channel)s);

-- name: job_rescue_expired
-- Take back up to %(limit)s running jobs whose lease expired: the worker died
-- or stopped heartbeating. The crashed attempt counts (it is logged as lost),
-- so a job that kills its worker cannot loop forever. Rows are locked and the
-- expiry re-checked in the UPDATE, so a live attempt is never stolen.
WITH expired AS MATERIALIZED (
    SELECT id, locked_by, lock_token, started_at, attempt FROM {schema}.job
    WHERE status = 'running' AND locked_until < coalesce(%(now)s::timestamptz, clock_timestamp())
    ORDER BY locked_until
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), rescued AS (
    UPDATE {schema}.job j
    SET status = CASE WHEN j.attempt < j.max_attempts THEN 'available' ELSE 'failed' END::{schema}.job_status,
        run_at = CASE WHEN j.attempt < j.max_attempts
                      THEN coalesce(%(now)s::timestamptz, clock_timestamp()) ELSE j.run_at END,
        finalized_at = CASE WHEN j.attempt < j.max_attempts
                            THEN NULL ELSE coalesce(%(now)s::timestamptz, clock_timestamp()) END,
        last_error = 'lease expired: the worker stopped heartbeating before the job finished',
        locked_by = NULL, lock_token = NULL, locked_until = NULL
    FROM expired e
    WHERE j.id = e.id AND j.status = 'running' AND j.lock_token = e.lock_token
    RETURNING j.id, j.definition, j.attempt, j.status::text AS status, j.channel, e.locked_by,
              e.started_at
), logged AS (
    INSERT INTO {schema}.job_attempt (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, locked_by, started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'lost', 'lease expired: the worker stopped heartbeating before the job finished'
    FROM rescued
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM rescued WHERE status = 'available') c
)
SELECT id, definition, attempt, status, locked_by, (SELECT n FROM woken) AS woken FROM rescued;

-- name: job_notify_finished
-- Wake result waiters of jobs finalized outside job_finish_many (timeouts,
-- unmet dependencies, lost workers, cancel). %(ids)s: comma-separated ids.
SELECT pg_notify(%(finished_channel)s, %(ids)s);

-- name: job_outcome
-- What a result waiter needs, from the hot table or, once swept, the archive.
SELECT status::text, result, last_error FROM {schema}.job WHERE id = %(id)s
UNION ALL
SELECT status::text, result, last_error FROM {schema}.job_archive
WHERE id = %(id)s AND NOT EXISTS (SELECT 1 FROM {schema}.job WHERE id = %(id)s);

-- name: job_ids_existing
-- Which of the given ids exist (to name the missing ones in an error).
SELECT id FROM {schema}.job WHERE id = ANY(%(ids)s::bigint[]);

-- name: job_status
SELECT status::text AS status FROM {schema}.job WHERE id = %(id)s;

-- name: job_count_unfinished
-- Jobs of a channel that are due now and not finalized (waiting ones included).
SELECT count(*) FROM {schema}.job
WHERE channel = %(channel)s AND finalized_at IS NULL AND run_at <= now();
