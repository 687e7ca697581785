-- Queries of the job management API (orchestra/_jobs.py: Config.jobs and
-- Config.jobs_async, and the `orchestra jobs` / `orchestra definitions`
-- commands): find and list jobs; retry, cancel and delete them, failed ones
-- also in bulk.
--
-- Reads apply no hidden time window: they see every job the tables hold,
-- however old.
--
-- Every statement that changes a job is ONE statement that locks the job's row
-- and re-checks its state in the WHERE of its UPDATE or DELETE, so it cannot
-- race a worker that claims or finishes the same job at the same moment: the
-- row lock makes one of the two wait, and the re-check sees what the other
-- committed. Each returns the state it found (`status`, NULL when the id is not
-- in the job table, and `archived_status` when it is in job_archive instead)
-- and whether it acted (`done`), so that Python can tell an unknown id from a
-- job in the wrong state without a second, racy read.
--
-- Wake-ups follow job.sql: one pg_notify per statement and channel on the
-- workers' channel (identical notifications of a transaction are folded into
-- one), and the finalized job ids on the result waiters' channel.

-- name: manage_job_get
-- Payloads and results come back as text, decoded row by row in Python: one
-- value Python cannot decode (nested too deeply) must not fail a whole list.
-- One job by id: from the hot table, or from job_archive once the sweeper
-- moved it there (archive=True), with its attempt log when asked. One
-- statement, one snapshot: the sweeper moves a job in one statement too, so the
-- job is seen in exactly one of the two tables. Live attempts are aggregated to
-- JSON exactly as job_archive.attempts stores them (job_sweep_finalized), so one
-- Python function reads both. An archived job keeps no dependency edges.
SELECT j.id, j.definition, j.channel, j.status::text AS status, j.priority, j.payload::text, j.result::text,
       j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at, j.finalized_at,
       j.last_error, j.unique_key, j.resource_key, j.locked_by,
       ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
             WHERE d.job_id = j.id ORDER BY d.required_job_id) AS depends_on,
       CASE WHEN %(with_attempts)s::boolean THEN coalesce(
           (SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
            FROM {schema}.job_attempt a WHERE a.job_id = j.id),
           '[]'::jsonb) END AS attempts,
       false AS archived
FROM {schema}.job j
WHERE j.id = %(id)s
UNION ALL
SELECT x.id, x.definition, x.channel, x.status::text, x.priority, x.payload::text, x.result::text,
       x.attempt, x.max_attempts, x.run_at, x.created_at, x.started_at, x.finalized_at,
       x.last_error, x.unique_key, x.resource_key, NULL::bigint,
       '{{}}'::bigint[],
       CASE WHEN %(with_attempts)s::boolean THEN x.attempts END,
       true
FROM {schema}.job_archive x
WHERE x.id = %(id)s AND NOT EXISTS (SELECT 1 FROM {schema}.job WHERE id = %(id)s);

-- name: manage_job_list_asc
-- A page of jobs: any statuses, optionally one definition and/or one
-- channel, oldest first. Two queries (asc, desc) rather than an ORDER BY on a
-- parameter, so that the planner can walk the primary key (or
-- job_definition_idx) in order and stop at LIMIT instead of sorting every
-- match. No time window: a job is listed as long as it exists.
SELECT j.id, j.definition, j.channel, j.status::text AS status, j.priority, j.payload::text, j.result::text,
       j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at, j.finalized_at,
       j.last_error, j.unique_key, j.resource_key, j.locked_by,
       ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
             WHERE d.job_id = j.id ORDER BY d.required_job_id) AS depends_on,
       NULL::jsonb AS attempts,
       false AS archived
FROM {schema}.job j
WHERE j.status = ANY(%(statuses)s::{schema}.job_status[])
  AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
  AND (%(channel)s::text IS NULL OR j.channel = %(channel)s::text)
ORDER BY j.id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: manage_job_list_desc
-- manage_job_list_asc, newest first.
SELECT j.id, j.definition, j.channel, j.status::text AS status, j.priority, j.payload::text, j.result::text,
       j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at, j.finalized_at,
       j.last_error, j.unique_key, j.resource_key, j.locked_by,
       ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
             WHERE d.job_id = j.id ORDER BY d.required_job_id) AS depends_on,
       NULL::jsonb AS attempts,
       false AS archived
FROM {schema}.job j
WHERE j.status = ANY(%(statuses)s::{schema}.job_status[])
  AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
  AND (%(channel)s::text IS NULL OR j.channel = %(channel)s::text)
ORDER BY j.id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: manage_job_count
-- How many jobs match the filters of manage_job_list_asc (for "page n of m").
SELECT count(*) AS n
FROM {schema}.job j
WHERE j.status = ANY(%(statuses)s::{schema}.job_status[])
  AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
  AND (%(channel)s::text IS NULL OR j.channel = %(channel)s::text);

-- name: manage_job_retry
-- Retry one job. A finalized job (succeeded, failed, cancelled) gets a
-- fresh attempt budget (attempt 0), no result, and becomes available now, or
-- waiting when one of its dependencies has not succeeded; an available job
-- that waits for its backoff is made due now. Running and waiting jobs are
-- refused. `limited` is recomputed, as job_insert computes it: the
-- definition's limits may have changed since the job was last unfinished
-- (definition_upsert only follows unfinished jobs), and a stale flag would send
-- the job down the wrong claim path.
--
-- Races. `target` locks the row, so a claim or finish in flight is waited for
-- and the status read is the latest committed one. The dependencies are read
-- FOR SHARE, as job_recheck_waiting does (decision 0007): a dependency's finish
-- in flight is waited for, and a later one waits for this statement and then
-- sees the job waiting and releases it. A unique_key now held by another
-- unfinished job of the definition is detected (`holder`) and nothing is
-- written; two retries racing for one key are stopped by job_unique_key_uniq,
-- which the caller reports the same way.
WITH target AS MATERIALIZED (
    SELECT id, status, definition, unique_key FROM {schema}.job
    WHERE id = %(id)s
    FOR NO KEY UPDATE
), deps AS MATERIALIZED (
    SELECT r.status FROM {schema}.job r
    WHERE r.id IN (SELECT d.required_job_id FROM {schema}.job_dependency d
                   WHERE d.job_id = %(id)s)
    FOR SHARE
), holder AS MATERIALIZED (
    SELECT o.id FROM {schema}.job o, target t
    WHERE o.definition = t.definition AND o.unique_key = t.unique_key
      AND o.finalized_at IS NULL AND o.id <> t.id
    ORDER BY o.id
    LIMIT 1
), retried AS (
    UPDATE {schema}.job j
    SET status = CASE
            WHEN j.finalized_at IS NULL THEN j.status
            WHEN EXISTS (SELECT 1 FROM deps WHERE deps.status <> 'succeeded') THEN 'waiting'
            ELSE 'available'
        END::{schema}.job_status,
        attempt = CASE WHEN j.finalized_at IS NULL THEN j.attempt ELSE 0 END,
        result = CASE WHEN j.finalized_at IS NULL THEN j.result END,
        run_at = CASE WHEN j.finalized_at IS NULL THEN least(j.run_at, now()) ELSE now() END,
        finalized_at = NULL,
        locked_by = NULL, lock_token = NULL, locked_until = NULL,
        limited = j.resource_key IS NOT NULL
            OR coalesce((SELECT d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL
                         FROM {schema}.job_definition d WHERE d.name = j.definition), j.limited)
    FROM target t
    WHERE j.id = t.id
      AND t.status IN ('available', 'succeeded', 'failed', 'cancelled')
      AND j.status IN ('available', 'succeeded', 'failed', 'cancelled')
      AND NOT EXISTS (SELECT 1 FROM holder)
    RETURNING j.id, j.status, j.channel
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM retried WHERE status = 'available') c
)
SELECT (SELECT status::text FROM target) AS status,
       (SELECT status::text FROM {schema}.job_archive WHERE id = %(id)s) AS archived_status,
       EXISTS (SELECT 1 FROM retried) AS done,
       (SELECT status::text FROM retried) AS new_status,
       (SELECT id FROM holder) AS holder_id,
       (SELECT unique_key FROM target) AS unique_key,
       (SELECT n FROM woken) AS woken;

-- name: manage_job_retry_failed
-- Retry one batch of failed jobs, each with a fresh attempt budget, of one
-- definition or all, in id order after %(after_id)s: the
-- caller pages on `last_id`, so each failed job is visited once even if it
-- fails again meanwhile, and locks are held for one bounded batch only. Rows
-- locked by someone else are skipped (SKIP LOCKED): they are being changed.
-- Same effect per job as manage_job_retry. Since a dependency has a smaller id
-- than its dependents, failed dependencies are retried first (or in the same
-- batch), and their dependents wait for them.
--
-- Unique keys: a failed job whose key is held by an unfinished job, or by a
-- newer failed job (which is retried instead), stays failed, so that the batch
-- never trips job_unique_key_uniq by itself. Should a job taking one of the
-- keys commit after this statement's snapshot, the index refuses the batch
-- and the caller runs it again (its new snapshot sees that job).
WITH batch AS MATERIALIZED (
    SELECT j.id, j.definition, j.unique_key FROM {schema}.job j
    WHERE j.status = 'failed' AND j.id > %(after_id)s
      AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
    ORDER BY j.id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), eligible AS MATERIALIZED (
    SELECT b.id FROM batch b
    WHERE b.unique_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM {schema}.job o
        WHERE o.definition = b.definition AND o.unique_key = b.unique_key AND o.id <> b.id
          AND (o.finalized_at IS NULL OR (o.status = 'failed' AND o.id > b.id)))
), deps AS MATERIALIZED (
    -- FOR SHARE for the reason given in manage_job_retry.
    SELECT d.job_id, r.status FROM {schema}.job_dependency d
    JOIN {schema}.job r ON r.id = d.required_job_id
    WHERE d.job_id IN (SELECT id FROM eligible)
    FOR SHARE OF r
), unmet AS MATERIALIZED (
    SELECT DISTINCT job_id FROM deps WHERE status <> 'succeeded'
), retried AS (
    UPDATE {schema}.job j
    SET status = CASE WHEN u.job_id IS NULL THEN 'available' ELSE 'waiting' END::{schema}.job_status,
        attempt = 0, result = NULL, run_at = now(), finalized_at = NULL,
        locked_by = NULL, lock_token = NULL, locked_until = NULL,
        limited = j.resource_key IS NOT NULL
            OR coalesce((SELECT d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL
                         FROM {schema}.job_definition d WHERE d.name = j.definition), j.limited)
    FROM eligible e LEFT JOIN unmet u ON u.job_id = e.id
    WHERE j.id = e.id AND j.status = 'failed'
    RETURNING j.id, j.status, j.channel
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM retried WHERE status = 'available') c
)
SELECT (SELECT count(*) FROM batch) AS scanned,
       (SELECT max(id) FROM batch) AS last_id,
       (SELECT count(*) FROM retried) AS retried,
       (SELECT n FROM woken) AS woken;

-- name: manage_job_cancel
-- Cancel one unfinished job (waiting, available or running): it is finalized
-- as cancelled, its lock fields cleared, and result waiters are told at once.
-- A running attempt is not killed: its worker's finish is fenced by (id,
-- attempt, lock_token) in job_finish_many and will simply be refused. That
-- attempt is logged here as interrupted (as job_finalize_timed_out logs a cut
-- attempt), so that every attempt keeps its row. The row lock in `target`
-- waits for a claim or finish in flight; the WHERE re-checks that the job is
-- still unfinished. Dependents are failed by the orchestrator's finalizer
-- (unmet_dependencies), as for any cancelled dependency. A running job no
-- longer holds its resource key nor a max_concurrency slot once cancelled, so
-- its channel's workers are woken to take the next job.
WITH target AS MATERIALIZED (
    SELECT id, status, channel, attempt, locked_by, started_at FROM {schema}.job
    WHERE id = %(id)s
    FOR NO KEY UPDATE
), cancelled AS (
    UPDATE {schema}.job j
    SET status = 'cancelled', finalized_at = clock_timestamp(),
        last_error = coalesce(j.last_error, 'cancelled'),
        locked_by = NULL, lock_token = NULL, locked_until = NULL
    FROM target t
    WHERE j.id = t.id AND j.finalized_at IS NULL
    RETURNING j.id
), logged AS (
    INSERT INTO {schema}.job_attempt
        (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT t.id, t.attempt, t.locked_by, t.started_at, clock_timestamp(), 'interrupted',
           'cancelled: the job was cancelled while this attempt ran; its outcome is discarded'
    FROM target t JOIN cancelled c ON c.id = t.id
    WHERE t.status = 'running'
), notified AS (
    SELECT count(pg_notify(%(finished_channel)s, id::text)) AS n FROM cancelled
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, t.channel)) AS n
    FROM target t JOIN cancelled c ON c.id = t.id
    WHERE t.status = 'running'
)
SELECT (SELECT status::text FROM target) AS status,
       (SELECT status::text FROM {schema}.job_archive WHERE id = %(id)s) AS archived_status,
       EXISTS (SELECT 1 FROM cancelled) AS done,
       (SELECT n FROM notified) AS notified,
       (SELECT n FROM woken) AS woken;

-- name: manage_job_lock
-- First statement of a delete, in the same transaction as manage_job_delete:
-- lock the job FOR UPDATE. A defer(depends_on=[this job]) holds KEY SHARE on
-- it until it commits, so this waits for it, and the delete's own snapshot,
-- taken after, sees the new dependent. (In one statement the snapshot would
-- predate the lock, the dependent would be missed, and the cascade would
-- delete its edge, letting it run without its dependency.) A later defer waits
-- for our commit and then finds the job gone.
SELECT id FROM {schema}.job WHERE id = %(id)s FOR UPDATE;

-- name: manage_job_delete
-- Second statement of a delete: delete the job unless it is running or an
-- unfinished job depends on it. Its attempt-log rows and dependency edges go
-- with it (ON DELETE CASCADE). The row is locked by manage_job_lock, so the
-- status read here cannot change before the DELETE; the DELETE re-checks it all
-- the same.
WITH target AS MATERIALIZED (
    SELECT id, status FROM {schema}.job WHERE id = %(id)s
), blocker AS MATERIALIZED (
    SELECT d.job_id FROM {schema}.job_dependency d
    JOIN {schema}.job w ON w.id = d.job_id
    WHERE d.required_job_id = %(id)s AND w.finalized_at IS NULL
    ORDER BY d.job_id
    LIMIT 1
), deleted AS (
    DELETE FROM {schema}.job j USING target t
    WHERE j.id = t.id AND j.status <> 'running' AND NOT EXISTS (SELECT 1 FROM blocker)
    RETURNING j.id
)
SELECT (SELECT status::text FROM target) AS status,
       (SELECT status::text FROM {schema}.job_archive WHERE id = %(id)s) AS archived_status,
       EXISTS (SELECT 1 FROM deleted) AS done,
       (SELECT job_id FROM blocker) AS blocker_id;

-- name: manage_job_lock_failed
-- First statement of a bulk delete batch, in the transaction of
-- manage_job_delete_failed, for the reason given at manage_job_lock: lock up to
-- %(limit)s failed jobs after %(after_id)s, in id order. Rows locked by someone
-- else are skipped; the caller pages on the largest id returned.
SELECT j.id FROM {schema}.job j
WHERE j.status = 'failed' AND j.id > %(after_id)s
  AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
ORDER BY j.id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: manage_job_delete_failed
-- Second statement of a bulk delete batch: delete the locked jobs that are
-- still failed and that no unfinished job depends on (those stay; a finished
-- dependent does not hold its dependency back, as in job_sweep_finalized).
DELETE FROM {schema}.job j
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.status = 'failed'
  AND NOT EXISTS (
      SELECT 1 FROM {schema}.job_dependency d
      JOIN {schema}.job w ON w.id = d.job_id
      WHERE d.required_job_id = j.id AND w.finalized_at IS NULL)
RETURNING j.id;

-- name: manage_definition_list
-- Every definition row with its settings, its daemons' timestamps, and how
-- many of its jobs are in each status (finalized ones included, until swept).
-- Counted per definition through job_definition_idx.
SELECT d.name, d.channel, d.num_attempts, d.backoff, d.priority, d.repeat_interval_ms, d.cron,
       d.release_interval_ms, d.max_concurrency, d.lock_interval_ms, d.timeout_interval_ms,
       d.last_repeated_at, d.next_tick_at, d.last_released_at, d.last_heartbeat_at, d.paused,
       coalesce((SELECT jsonb_object_agg(c.status, c.n)
                 FROM (SELECT j.status::text AS status, count(*) AS n
                       FROM {schema}.job j WHERE j.definition = d.name
                       GROUP BY j.status) c),
                '{{}}'::jsonb) AS counts
FROM {schema}.job_definition d
ORDER BY d.name;
