-- Queries of the orchestrator's maintenance services. Each takes %(now)s:
-- NULL in production (the database clock decides), a fixed time in tests.
-- Each works on a bounded batch and locks its rows with SKIP LOCKED, so two
-- orchestrators that both believe they lead never act twice on one row.

-- name: definition_heartbeat_many
-- Record that a daemon still carries these definitions.
UPDATE {schema}.job_definition
SET last_heartbeat_at = coalesce(%(now)s::timestamptz, clock_timestamp())
WHERE name = ANY(%(names)s::text[])
RETURNING name;

-- name: job_insert_tick
-- Enqueue the job of one repeat tick, at most once: the definition row is
-- locked and its last_repeated_at checked and set in the same statement, and
-- the unique (definition, tick_at) index stops a second insert even from a
-- second leader. With overlap off, a tick whose previous job is unfinished is
-- recorded as done without a job (skipped).
WITH def AS MATERIALIZED (
    SELECT name, channel, num_attempts, priority,
           release_interval_ms > 0 OR max_concurrency IS NOT NULL AS limited
    FROM {schema}.job_definition
    WHERE name = %(definition)s
      AND (last_repeated_at IS NULL OR last_repeated_at < %(tick_at)s::timestamptz)
    FOR NO KEY UPDATE
), busy AS MATERIALIZED (
    SELECT EXISTS (
        SELECT 1 FROM {schema}.job
        WHERE definition = %(definition)s AND tick_at IS NOT NULL AND finalized_at IS NULL
    ) AS busy
), inserted AS (
    INSERT INTO {schema}.job (definition, channel, priority, payload, max_attempts, run_at, tick_at, limited)
    SELECT def.name, def.channel, def.priority, %(payload)s::jsonb, def.num_attempts,
           coalesce(%(now)s::timestamptz, clock_timestamp()), %(tick_at)s::timestamptz, def.limited
    FROM def, busy
    WHERE %(overlap)s OR NOT busy.busy
    ON CONFLICT (definition, tick_at) WHERE tick_at IS NOT NULL DO NOTHING
    RETURNING id, channel
), marked AS (
    UPDATE {schema}.job_definition d
    SET last_repeated_at = %(tick_at)s::timestamptz, next_tick_at = %(next_tick_at)s::timestamptz
    FROM def WHERE d.name = def.name
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n FROM inserted
)
SELECT (SELECT id FROM inserted) AS job_id,
       EXISTS (SELECT 1 FROM def) AS due,
       (SELECT busy FROM busy) AS busy,
       (SELECT n FROM woken) AS woken;

-- name: definition_plan_tick
-- Plan the first tick of a new definition (or of a changed interval) without
-- enqueueing anything: its job is enqueued once that tick is reached, so a
-- tick from before the definition was seen is never run. Compare-and-set on
-- the two columns the scheduler read: when another scheduler changed them in
-- between, nothing is written (no row returned) and the next pass decides.
UPDATE {schema}.job_definition
SET next_tick_at = %(next_tick_at)s::timestamptz
WHERE name = %(definition)s
  AND last_repeated_at IS NOT DISTINCT FROM %(seen_last)s::timestamptz
  AND next_tick_at IS NOT DISTINCT FROM %(seen_next)s::timestamptz
RETURNING name;

-- name: definition_repeat_state
-- The last handled tick and the next planned one of the definitions a
-- scheduler carries.
SELECT name, last_repeated_at, next_tick_at
FROM {schema}.job_definition
WHERE name = ANY(%(names)s::text[]);

-- name: job_rescue_stale_workers
-- Take back the running jobs of workers whose heartbeat is older than the
-- threshold, whatever their lease says, then delete those worker rows. Rows
-- are re-checked (status, token) under their lock, so a live attempt of a
-- live worker is never touched.
WITH stale AS MATERIALIZED (
    SELECT id FROM {schema}.worker
    WHERE heartbeat_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                         - %(threshold_ms)s * interval '1 millisecond'
    ORDER BY heartbeat_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), held AS MATERIALIZED (
    SELECT j.id, j.locked_by, j.lock_token, j.started_at FROM {schema}.job j
    WHERE j.status = 'running' AND j.locked_by IN (SELECT id FROM stale)
    FOR NO KEY UPDATE OF j SKIP LOCKED
), rescued AS (
    UPDATE {schema}.job j
    SET status = CASE WHEN j.attempt < j.max_attempts THEN 'available' ELSE 'failed' END::{schema}.job_status,
        run_at = CASE WHEN j.attempt < j.max_attempts
                      THEN coalesce(%(now)s::timestamptz, clock_timestamp()) ELSE j.run_at END,
        finalized_at = CASE WHEN j.attempt < j.max_attempts
                            THEN NULL ELSE coalesce(%(now)s::timestamptz, clock_timestamp()) END,
        last_error = 'worker lost: its heartbeat stopped before the job finished',
        locked_by = NULL, lock_token = NULL, locked_until = NULL
    FROM held h
    WHERE j.id = h.id AND j.lock_token = h.lock_token
    RETURNING j.id, j.definition, j.attempt, j.status::text AS status, j.channel, h.locked_by,
              h.started_at
), logged AS (
    INSERT INTO {schema}.job_attempt (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, locked_by, started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'lost', 'worker lost: its heartbeat stopped before the job finished'
    FROM rescued
), removed AS (
    DELETE FROM {schema}.worker WHERE id IN (SELECT id FROM stale) RETURNING id
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM rescued WHERE status = 'available') c
)
SELECT 'job' AS kind, id, definition, attempt, status, locked_by, (SELECT n FROM woken) AS woken
FROM rescued
UNION ALL
SELECT 'worker', id, NULL, NULL, NULL, NULL, NULL FROM removed;

-- name: job_finalize_timed_out
-- Fail up to %(limit)s unfinished jobs whose overall timeout, counted from
-- run_at (when the job became runnable, not its creation, so that a delayed
-- job cannot time out before it was due), has passed. Per definition, so that
-- the (definition, run_at) index serves it. A running attempt is cut: its
-- worker's late finish is refused by the fence.
WITH due AS MATERIALIZED (
    SELECT j.id, j.status AS old_status, j.locked_by, j.started_at
    FROM {schema}.job_definition d
    CROSS JOIN LATERAL (
        SELECT id, status, locked_by, started_at FROM {schema}.job
        WHERE definition = d.name AND finalized_at IS NULL
          AND run_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                       - d.timeout_interval_ms * interval '1 millisecond'
        ORDER BY run_at
        LIMIT %(limit)s
        FOR NO KEY UPDATE SKIP LOCKED
    ) j
    WHERE d.timeout_interval_ms > 0
    LIMIT %(limit)s
), finalized AS (
    UPDATE {schema}.job j
    SET status = 'failed', finalized_at = coalesce(%(now)s::timestamptz, clock_timestamp()),
        last_error = 'timeout: not finished within timeout_interval_ms of becoming runnable',
        locked_by = NULL, lock_token = NULL, locked_until = NULL
    FROM due WHERE j.id = due.id AND j.finalized_at IS NULL
    RETURNING j.id, j.definition, j.attempt, due.old_status, due.locked_by, due.started_at
), logged AS (
    INSERT INTO {schema}.job_attempt (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, locked_by, started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'timed_out', 'timeout: not finished within timeout_interval_ms of becoming runnable'
    FROM finalized WHERE old_status = 'running'
)
SELECT id, definition, attempt FROM finalized;

-- name: job_finalize_unmet_dependencies
-- Fail up to %(limit)s waiting jobs that depend on a failed or cancelled job.
-- Run repeatedly, it cascades down a chain one level per statement.
WITH doomed AS MATERIALIZED (
    SELECT w.id FROM {schema}.job w
    WHERE w.status = 'waiting'
      AND EXISTS (
          SELECT 1 FROM {schema}.job_dependency d
          JOIN {schema}.job r ON r.id = d.required_job_id
          WHERE d.job_id = w.id AND r.status IN ('failed', 'cancelled'))
    ORDER BY w.id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE {schema}.job j
SET status = 'failed', finalized_at = coalesce(%(now)s::timestamptz, clock_timestamp()),
    last_error = 'unmet_dependencies: a job it depends on failed or was cancelled'
FROM doomed WHERE j.id = doomed.id AND j.status = 'waiting'
RETURNING j.id, j.definition, j.attempt;

-- name: job_release_satisfied
-- Catch-up for the release that a dependency's finish normally does itself:
-- waiting jobs whose dependencies all succeeded become available.
WITH ready AS MATERIALIZED (
    SELECT w.id FROM {schema}.job w
    WHERE w.status = 'waiting'
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job_dependency d
          JOIN {schema}.job r ON r.id = d.required_job_id
          WHERE d.job_id = w.id AND r.status <> 'succeeded')
    ORDER BY w.id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), released AS (
    UPDATE {schema}.job j SET status = 'available'
    FROM ready WHERE j.id = ready.id AND j.status = 'waiting'
    RETURNING j.id, j.definition, j.channel
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM released) c
)
SELECT id, definition, (SELECT n FROM woken) AS woken FROM released;

-- name: job_lock_sweepable
-- First statement of a sweep batch, in the transaction of
-- job_sweep_finalized: lock up to %(limit)s jobs finalized before the
-- threshold that no unfinished job depends on, oldest first. Locked rows
-- are skipped (a defer that names one as a dependency holds it KEY SHARE).
SELECT j.id FROM {schema}.job j
WHERE j.finalized_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                       - %(threshold_ms)s * interval '1 millisecond'
  AND NOT EXISTS (
      SELECT 1 FROM {schema}.job_dependency d
      JOIN {schema}.job w ON w.id = d.job_id
      WHERE d.required_job_id = j.id AND w.finalized_at IS NULL)
ORDER BY j.finalized_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: job_sweep_finalized
-- Second statement: delete (or archive, then delete) the locked jobs that
-- still no unfinished job depends on. A statement of its own so that its
-- snapshot follows the locks: a dependent deferred between the first
-- statement's snapshot and its lock committed before this one's snapshot and
-- is seen here, and a later one waits for the lock and then finds the job
-- gone (its defer fails, naming the missing dependency). Checked in one
-- statement, such a dependent's edge could go with the cascade and leave it
-- waiting for ever. Attempt-log rows and dependency edges go with the job.
WITH old AS MATERIALIZED (
    SELECT j.id FROM {schema}.job j
    WHERE j.id = ANY(%(ids)s::bigint[])
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job_dependency d
          JOIN {schema}.job w ON w.id = d.job_id
          WHERE d.required_job_id = j.id AND w.finalized_at IS NULL)
), archived AS (
    INSERT INTO {schema}.job_archive (
        id, definition, channel, status, priority, payload, result, attempt, max_attempts,
        run_at, unique_key, resource_key, tick_at, created_at, started_at, finalized_at,
        last_error, attempts, trace_context, created_by)
    SELECT j.id, j.definition, j.channel, j.status, j.priority, j.payload, j.result, j.attempt,
           j.max_attempts, j.run_at, j.unique_key, j.resource_key, j.tick_at, j.created_at,
           j.started_at, j.finalized_at, j.last_error,
           coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                     FROM {schema}.job_attempt a WHERE a.job_id = j.id), '[]'::jsonb),
           j.trace_context, j.created_by
    FROM {schema}.job j JOIN old ON old.id = j.id
    WHERE %(archive)s
    ON CONFLICT (id) DO NOTHING
)
DELETE FROM {schema}.job j USING old WHERE j.id = old.id
RETURNING j.id, j.definition;

-- name: job_archive_prune
-- Delete up to %(limit)s archived jobs finalized more than %(retention_ms)s
-- ago, oldest first (the orchestrator's archive_retention_ms).
DELETE FROM {schema}.job_archive a
WHERE a.id IN (
    SELECT id FROM {schema}.job_archive
    WHERE finalized_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                         - %(retention_ms)s * interval '1 millisecond'
    ORDER BY finalized_at
    LIMIT %(limit)s)
RETURNING a.id;

-- name: definition_sweep_stale
-- Delete up to %(limit)s definitions that no daemon heartbeated for the
-- threshold and that have no job at all, finalized ones included.
WITH stale AS MATERIALIZED (
    SELECT d.name FROM {schema}.job_definition d
    WHERE d.last_heartbeat_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                                - %(threshold_ms)s * interval '1 millisecond'
      AND NOT EXISTS (SELECT 1 FROM {schema}.job j WHERE j.definition = d.name)
    ORDER BY d.name
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {schema}.job_definition d USING stale WHERE d.name = stale.name
RETURNING d.name;
