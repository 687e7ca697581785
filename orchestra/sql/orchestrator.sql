-- The orchestrator (orchestra/_orchestrator/): its leader lease, and the
-- maintenance services the leader runs (scheduler of repeated jobs, rescuer,
-- finalizer, sweeper). A query that reads the time takes %(now)s: NULL in
-- production (the database clock decides), a fixed time in tests. A query
-- that changes jobs works on a bounded batch and locks its rows with SKIP
-- LOCKED, so two orchestrators that both believe they lead never act twice
-- on one row.

-- == Leader lease ============================================================

-- name: leader_attempt_elect
-- Take the lease if it is free or expired, or renew it if we hold it. A row
-- comes back only when we hold the lease afterwards.
INSERT INTO {schema}.leader AS l (name, holder, elected_at, expires_at)
VALUES (%(name)s, %(holder)s, clock_timestamp(),
        clock_timestamp() + %(lease_ms)s * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    elected_at = CASE WHEN l.holder = excluded.holder THEN l.elected_at ELSE excluded.elected_at END,
    expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at < clock_timestamp()
RETURNING holder, elected_at, expires_at;

-- name: leader_resign
DELETE FROM {schema}.leader WHERE name = %(name)s AND holder = %(holder)s;

-- name: clock_now
-- The database clock: the scheduler plans ticks on it, the dashboard shows it.
SELECT clock_timestamp();

-- == Scheduler: repeated jobs ================================================

-- name: definition_repeat_state
-- The last handled tick and the next planned one of the definitions a
-- scheduler carries.
SELECT name, last_repeated_at, next_tick_at
FROM {schema}.job_definition
WHERE name = ANY(%(names)s::text[]);

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

-- name: job_insert_tick
-- Enqueue the job of one repeat tick, at most once: the definition row is
-- locked and its last_repeated_at checked and set in the same statement, and
-- the unique (definition, tick_at) index stops a second insert even from a
-- second leader. With overlap off, a tick whose previous job is unfinished is
-- recorded as done without a job (skipped); so is every tick of a paused
-- definition (it does not run late once resumed).
WITH def AS MATERIALIZED (
    SELECT name, channel, num_attempts, priority, paused,
           release_interval_ms > 0 OR max_concurrency IS NOT NULL AS limited
    FROM {schema}.job_definition
    WHERE name = %(definition)s
      AND (last_repeated_at IS NULL OR last_repeated_at < %(tick_at)s::timestamptz)
    FOR NO KEY UPDATE
), busy AS MATERIALIZED (
    SELECT EXISTS (
        -- Every row of the hot table is unfinished; job_tick_uniq serves this.
        SELECT 1 FROM {schema}.job
        WHERE definition = %(definition)s AND tick_at IS NOT NULL
    ) AS busy
), inserted AS (
    INSERT INTO {schema}.job (definition, channel, priority, payload, max_attempts, run_at, tick_at, limited)
    SELECT def.name, def.channel, def.priority, %(payload)s::jsonb, def.num_attempts,
           coalesce(%(now)s::timestamptz, clock_timestamp()), %(tick_at)s::timestamptz, def.limited
    FROM def, busy
    WHERE (%(overlap)s OR NOT busy.busy) AND NOT def.paused
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
       (SELECT n FROM woken) AS woken,
       coalesce((SELECT paused FROM def), false) AS paused;

-- == Rescuer: jobs of dead workers ===========================================

-- name: job_rescue_expired
-- Take back up to %(limit)s running jobs whose lease expired: the worker died
-- or stopped heartbeating. The crashed attempt counts (it is logged as lost),
-- so a job that kills its worker cannot loop forever: with no attempt left it
-- fails and moves to the history. Rows are locked and the expiry re-checked
-- in the UPDATE or DELETE, so a live attempt is never stolen. Running jobs are
-- found through job_locked_by_idx: there are at most as many as the fleet's
-- concurrency.
WITH expired AS MATERIALIZED (
    SELECT id, locked_by, lock_token, started_at, attempt,
           attempt >= max_attempts AS ends
    FROM {schema}.job
    WHERE status = 'running' AND locked_by IS NOT NULL
      AND locked_until < coalesce(%(now)s::timestamptz, clock_timestamp())
    ORDER BY locked_until
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), retried AS (
    UPDATE {schema}.job j
    SET status = 'available',
        run_at = coalesce(%(now)s::timestamptz, clock_timestamp()),
        last_error = 'lease expired: the worker stopped heartbeating before the job finished',
        locked_by = NULL, lock_token = NULL, locked_until = NULL
    FROM expired e
    WHERE NOT e.ends AND j.id = e.id AND j.status = 'running' AND j.lock_token = e.lock_token
    RETURNING j.id, j.definition, j.attempt, j.status::text AS status, j.channel, e.locked_by,
              e.started_at
), ended AS (
    DELETE FROM {schema}.job j
    USING expired e
    WHERE e.ends AND j.id = e.id AND j.status = 'running' AND j.lock_token = e.lock_token
    RETURNING j.*, e.locked_by AS lost_by, e.started_at AS lost_started_at
), earlier AS (
    DELETE FROM {schema}.job_attempt a USING ended e WHERE a.job_id = e.id
    RETURNING a.*
), historied AS (
    INSERT INTO {schema}.job_history (
        id, definition, channel, status, priority, payload, result, attempt, max_attempts,
        run_at, unique_key, resource_key, tick_at, created_at, started_at, finalized_at,
        last_error, attempts, trace_context, created_by, tags, meta, progress)
    SELECT e.id, e.definition, e.channel, 'failed', e.priority, e.payload, NULL, e.attempt,
           e.max_attempts, e.run_at, e.unique_key, e.resource_key, e.tick_at, e.created_at,
           e.started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'lease expired: the worker stopped heartbeating before the job finished',
           coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                     FROM earlier a WHERE a.job_id = e.id), '[]'::jsonb)
           || jsonb_build_array(jsonb_build_object(
                  'attempt', e.attempt, 'worker_id', e.lost_by, 'worker_name', NULL,
                  'started_at', e.lost_started_at,
                  'finished_at', coalesce(%(now)s::timestamptz, clock_timestamp()),
                  'outcome', 'lost',
                  'error', 'lease expired: the worker stopped heartbeating before the job finished',
                  'traceback', NULL, 'lock_token', NULL)),
           e.trace_context, e.created_by, e.tags, e.meta, e.progress
    FROM ended e
    RETURNING id, definition, attempt, status::text AS status, channel
), rescued AS (
    SELECT id, definition, attempt, status, channel, locked_by FROM retried
    UNION ALL
    SELECT h.id, h.definition, h.attempt, h.status, h.channel, e.lost_by
    FROM historied h JOIN ended e ON e.id = h.id
), logged AS (
    INSERT INTO {schema}.job_attempt (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, locked_by, started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'lost', 'lease expired: the worker stopped heartbeating before the job finished'
    FROM retried
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM retried) c
)
SELECT id, definition, attempt, status, locked_by, (SELECT n FROM woken) AS woken FROM rescued;

-- name: job_rescue_stale_workers
-- Take back the running jobs of workers whose heartbeat is older than the
-- threshold, whatever their lease says, then delete those worker rows. Rows
-- are re-checked (status, token) under their lock, so a live attempt of a
-- live worker is never touched. The lost attempt counts: a job with attempts
-- left is available again (its attempt logged as lost in job_attempt); one
-- without fails and moves to job_history, the lost attempt as the last entry
-- of its attempts JSON, as job_rescue_expired does.
WITH stale AS MATERIALIZED (
    SELECT id FROM {schema}.worker
    WHERE heartbeat_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                         - %(threshold_ms)s * interval '1 millisecond'
    ORDER BY heartbeat_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), held AS MATERIALIZED (
    SELECT j.id, j.locked_by, j.lock_token, j.started_at, j.attempt >= j.max_attempts AS ends
    FROM {schema}.job j
    WHERE j.status = 'running' AND j.locked_by IN (SELECT id FROM stale)
    FOR NO KEY UPDATE OF j SKIP LOCKED
), retried AS (
    UPDATE {schema}.job j
    SET status = 'available',
        run_at = coalesce(%(now)s::timestamptz, clock_timestamp()),
        last_error = 'worker lost: its heartbeat stopped before the job finished',
        locked_by = NULL, lock_token = NULL, locked_until = NULL
    FROM held h
    WHERE NOT h.ends AND j.id = h.id AND j.status = 'running' AND j.lock_token = h.lock_token
    RETURNING j.id, j.definition, j.attempt, j.status::text AS status, j.channel, h.locked_by,
              h.started_at
), ended AS (
    DELETE FROM {schema}.job j
    USING held h
    WHERE h.ends AND j.id = h.id AND j.status = 'running' AND j.lock_token = h.lock_token
    RETURNING j.*, h.locked_by AS lost_by, h.started_at AS lost_started_at
), earlier AS (
    DELETE FROM {schema}.job_attempt a USING ended e WHERE a.job_id = e.id
    RETURNING a.*
), historied AS (
    INSERT INTO {schema}.job_history (
        id, definition, channel, status, priority, payload, result, attempt, max_attempts,
        run_at, unique_key, resource_key, tick_at, created_at, started_at, finalized_at,
        last_error, attempts, trace_context, created_by, tags, meta, progress)
    SELECT e.id, e.definition, e.channel, 'failed', e.priority, e.payload, NULL, e.attempt,
           e.max_attempts, e.run_at, e.unique_key, e.resource_key, e.tick_at, e.created_at,
           e.started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'worker lost: its heartbeat stopped before the job finished',
           coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                     FROM earlier a WHERE a.job_id = e.id), '[]'::jsonb)
           || jsonb_build_array(jsonb_build_object(
                  'attempt', e.attempt, 'worker_id', e.lost_by, 'worker_name', NULL,
                  'started_at', e.lost_started_at,
                  'finished_at', coalesce(%(now)s::timestamptz, clock_timestamp()),
                  'outcome', 'lost',
                  'error', 'worker lost: its heartbeat stopped before the job finished',
                  'traceback', NULL, 'lock_token', NULL)),
           e.trace_context, e.created_by, e.tags, e.meta, e.progress
    FROM ended e
    RETURNING id, definition, attempt, status::text AS status
), rescued AS (
    SELECT id, definition, attempt, status, locked_by FROM retried
    UNION ALL
    SELECT h.id, h.definition, h.attempt, h.status, e.lost_by
    FROM historied h JOIN ended e ON e.id = h.id
), logged AS (
    INSERT INTO {schema}.job_attempt (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, locked_by, started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'lost', 'worker lost: its heartbeat stopped before the job finished'
    FROM retried
), removed AS (
    DELETE FROM {schema}.worker WHERE id IN (SELECT id FROM stale) RETURNING id
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM retried) c
)
SELECT 'job' AS kind, id, definition, attempt, status, locked_by, (SELECT n FROM woken) AS woken
FROM rescued
UNION ALL
SELECT 'worker', id, NULL, NULL, NULL, NULL, NULL FROM removed;

-- == Finalizer: jobs that can no longer finish by themselves =================

-- name: job_finalize_timed_out
-- Fail up to %(limit)s unfinished jobs whose overall timeout, counted from
-- run_at (when the job became runnable, not its creation, so that a delayed
-- job cannot time out before it was due), has passed, and move them to
-- job_history. A running attempt is cut: it is logged as timed_out (the last
-- entry of the attempts JSON), and its worker's late finish is refused by
-- the fence, the row being gone. There is no index on (definition, run_at):
-- this scans the hot table, which holds unfinished jobs only, and looks each
-- one's definition up (a hash join with the few definitions that have a
-- timeout). Every row found is deleted, so it is locked FOR UPDATE at once.
WITH due AS MATERIALIZED (
    SELECT j.id, j.status AS old_status, j.locked_by, j.started_at
    FROM {schema}.job j
    JOIN {schema}.job_definition d ON d.name = j.definition
    WHERE d.timeout_interval_ms > 0
      AND j.run_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                     - d.timeout_interval_ms * interval '1 millisecond'
    ORDER BY j.run_at
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
), ended AS (
    DELETE FROM {schema}.job j USING due
    WHERE j.id = due.id
    RETURNING j.*, due.old_status, due.locked_by AS cut_by, due.started_at AS cut_started_at
), earlier AS (
    DELETE FROM {schema}.job_attempt a USING ended e WHERE a.job_id = e.id
    RETURNING a.*
), historied AS (
    INSERT INTO {schema}.job_history (
        id, definition, channel, status, priority, payload, result, attempt, max_attempts,
        run_at, unique_key, resource_key, tick_at, created_at, started_at, finalized_at,
        last_error, attempts, trace_context, created_by, tags, meta, progress)
    SELECT e.id, e.definition, e.channel, 'failed', e.priority, e.payload, NULL, e.attempt,
           e.max_attempts, e.run_at, e.unique_key, e.resource_key, e.tick_at, e.created_at,
           e.started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'timeout: not finished within timeout_interval_ms of becoming runnable',
           coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                     FROM earlier a WHERE a.job_id = e.id), '[]'::jsonb)
           || CASE WHEN e.old_status = 'running' THEN jsonb_build_array(jsonb_build_object(
                  'attempt', e.attempt, 'worker_id', e.cut_by, 'worker_name', NULL,
                  'started_at', e.cut_started_at,
                  'finished_at', coalesce(%(now)s::timestamptz, clock_timestamp()),
                  'outcome', 'timed_out',
                  'error', 'timeout: not finished within timeout_interval_ms of becoming runnable',
                  'traceback', NULL, 'lock_token', NULL))
              ELSE '[]'::jsonb END,
           e.trace_context, e.created_by, e.tags, e.meta, e.progress
    FROM ended e
    RETURNING id, definition, attempt
)
SELECT id, definition, attempt FROM historied;

-- name: job_finalize_unmet_dependencies
-- Fail up to %(limit)s waiting jobs that can never run, and move them to
-- job_history: a dependency of theirs is in the history as failed or
-- cancelled, or is in neither table (deleted by the history's retention
-- before they were deferred or while they waited). A job is in exactly one
-- of the two tables in any snapshot (it moves in one statement), so "in
-- neither" never catches a dependency on its way between them. Run
-- repeatedly, it cascades down a chain one level per statement.
WITH doomed AS MATERIALIZED (
    SELECT w.id FROM {schema}.job w
    WHERE w.status = 'waiting'
      AND EXISTS (
          -- One primary-key probe of the history per edge (an OR of subqueries
          -- could make the planner hash the whole history instead).
          SELECT 1 FROM {schema}.job_dependency d
          LEFT JOIN {schema}.job_history h ON h.id = d.required_job_id
          WHERE d.job_id = w.id
            AND (h.status IN ('failed', 'cancelled')
                 OR (h.id IS NULL
                     AND NOT EXISTS (SELECT 1 FROM {schema}.job r WHERE r.id = d.required_job_id))))
    ORDER BY w.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), ended AS (
    DELETE FROM {schema}.job j USING doomed
    WHERE j.id = doomed.id AND j.status = 'waiting'
    RETURNING j.*
), earlier AS (
    -- A waiting job has attempt-log rows only when it was retried from the
    -- history: usually one empty probe.
    DELETE FROM {schema}.job_attempt a USING ended e WHERE a.job_id = e.id
    RETURNING a.*
), historied AS (
    INSERT INTO {schema}.job_history (
        id, definition, channel, status, priority, payload, result, attempt, max_attempts,
        run_at, unique_key, resource_key, tick_at, created_at, started_at, finalized_at,
        last_error, attempts, trace_context, created_by, tags, meta, progress)
    SELECT e.id, e.definition, e.channel, 'failed', e.priority, e.payload, NULL, e.attempt,
           e.max_attempts, e.run_at, e.unique_key, e.resource_key, e.tick_at, e.created_at,
           e.started_at, coalesce(%(now)s::timestamptz, clock_timestamp()),
           'unmet_dependencies: a job it depends on failed or was cancelled',
           coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                     FROM earlier a WHERE a.job_id = e.id), '[]'::jsonb),
           e.trace_context, e.created_by, e.tags, e.meta, e.progress
    FROM ended e
    RETURNING id, definition, attempt
)
SELECT id, definition, attempt FROM historied ORDER BY id;

-- name: job_release_satisfied
-- Catch-up for the release that a dependency's finish normally does itself:
-- waiting jobs whose dependencies are all in job_history as succeeded become
-- available.
WITH ready AS MATERIALIZED (
    SELECT w.id FROM {schema}.job w
    WHERE w.status = 'waiting'
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job_dependency d
          WHERE d.job_id = w.id
            AND NOT EXISTS (SELECT 1 FROM {schema}.job_history h
                            WHERE h.id = d.required_job_id AND h.status = 'succeeded'))
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

-- name: job_notify_finished
-- Wake result waiters of jobs finalized outside job_finish_many (timeouts,
-- unmet dependencies, lost workers, cancel). %(ids)s: comma-separated ids.
SELECT pg_notify(%(finished_channel)s, %(ids)s);

-- == Sweeper: history partitions, retention, orphans =========================

-- name: job_history_prepare
-- Make the history's partitions ahead of the ids being given out: those of
-- the ranges from the highest id in use to 2,000,000 beyond it, 1,000,000
-- ids each, as the migration made them. Rows that the default partition
-- took meanwhile move into the new partitions. Cheap when they exist: a
-- catalog lookup per range. The highest id is read from the tables (through
-- their primary keys), not from the sequence, which the orchestrator's role
-- may only use; the margin covers ids given out but not yet visible.
SELECT {schema}.job_history_prepare(m.id, m.id + 2000000, 1000000)
FROM (SELECT greatest(coalesce((SELECT max(id) FROM {schema}.job), 0),
                      coalesce((SELECT max(id) FROM {schema}.job_history), 0)) AS id) m;

-- name: job_history_drop_before
-- Retention of the history, a whole partition at a time: drop, oldest first,
-- up to %(limit)s partitions whose every job finished before the cutoff
-- (now minus %(retention_ms)s), with the dependency edges of their jobs. A
-- drop locks the whole job_history table (ACCESS EXCLUSIVE) until commit:
-- the caller passes a limit of 1 and a lock_timeout, so finishes wait for one
-- short drop at a time, and never behind a drop that itself waits for a long
-- reader of the history.
SELECT d.partition_name, d.jobs, c.cutoff
FROM (SELECT coalesce(%(now)s::timestamptz, clock_timestamp())
             - %(retention_ms)s * interval '1 millisecond' AS cutoff) c
CROSS JOIN LATERAL {schema}.job_history_drop_before(c.cutoff, %(limit)s) d;

-- name: job_history_default_prune
-- Retention of the rows of the default partition (ids beyond the partitions
-- made when they finished), one by one: delete up to %(limit)s finished
-- before the cutoff, oldest first, with their dependency edges.
WITH old AS MATERIALIZED (
    SELECT h.id FROM {schema}.job_history_default h
    WHERE h.finalized_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                           - %(retention_ms)s * interval '1 millisecond'
    ORDER BY h.finalized_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), edges AS (
    DELETE FROM {schema}.job_dependency d USING old WHERE d.job_id = old.id
)
DELETE FROM {schema}.job_history_default h USING old
WHERE h.id = old.id
RETURNING h.id, h.definition;

-- name: job_attempt_prune_orphans
-- Delete up to %(limit)s attempt-log rows whose job is in neither table (it
-- was deleted while unfinished). The finishing statements move a job's rows
-- into its history row, so there are few; the table holds the log of
-- unfinished jobs only and is scanned whole.
DELETE FROM {schema}.job_attempt a
WHERE a.id IN (
    SELECT o.id FROM {schema}.job_attempt o
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.job j WHERE j.id = o.job_id)
      AND NOT EXISTS (SELECT 1 FROM {schema}.job_history h WHERE h.id = o.job_id)
    ORDER BY o.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING a.job_id;

-- name: job_dependency_prune_orphans
-- Delete the dependency edges whose dependent job is in neither table, among
-- the next %(limit)s edges after (%(after_job_id)s, %(after_required_job_id)s)
-- in primary-key order. Edges stay after their jobs end (until the history
-- partition of the dependent is dropped, with them), so the table can be
-- large: each statement examines one bounded slice, and the caller walks the
-- table slice by slice across passes. Returns how many edges were examined,
-- the last one (where to go on from), and how many were deleted.
WITH slice AS MATERIALIZED (
    SELECT d.job_id, d.required_job_id FROM {schema}.job_dependency d
    WHERE (d.job_id, d.required_job_id)
          > (%(after_job_id)s::bigint, %(after_required_job_id)s::bigint)
    ORDER BY d.job_id, d.required_job_id
    LIMIT %(limit)s
), orphaned AS MATERIALIZED (
    -- Found apart from the DELETE: joined to the slice there, the planner
    -- would hash the whole table.
    SELECT s.job_id, s.required_job_id FROM slice s
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.job j WHERE j.id = s.job_id)
      AND NOT EXISTS (SELECT 1 FROM {schema}.job_history h WHERE h.id = s.job_id)
), deleted AS (
    DELETE FROM {schema}.job_dependency d USING orphaned o
    WHERE d.job_id = o.job_id AND d.required_job_id = o.required_job_id
    RETURNING d.job_id
), last AS (
    SELECT job_id, required_job_id FROM slice
    ORDER BY job_id DESC, required_job_id DESC
    LIMIT 1
)
SELECT (SELECT count(*) FROM slice) AS examined,
       (SELECT job_id FROM last) AS last_job_id,
       (SELECT required_job_id FROM last) AS last_required_job_id,
       (SELECT count(*) FROM deleted) AS deleted;

-- name: definition_sweep_stale
-- Delete up to %(limit)s definitions that no daemon heartbeated for the
-- threshold and that have no job at all: none unfinished in the hot table,
-- none finished in the history. job_history has no index on definition: a
-- stale candidate (rare: a definition removed from the code) costs a scan of
-- the history until one of its jobs is found, or a whole scan when it has
-- none left, and then it is deleted.
WITH stale AS MATERIALIZED (
    SELECT d.name FROM {schema}.job_definition d
    WHERE d.last_heartbeat_at < coalesce(%(now)s::timestamptz, clock_timestamp())
                                - %(threshold_ms)s * interval '1 millisecond'
      AND NOT EXISTS (SELECT 1 FROM {schema}.job j WHERE j.definition = d.name)
      AND NOT EXISTS (SELECT 1 FROM {schema}.job_history h WHERE h.definition = d.name)
    ORDER BY d.name
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {schema}.job_definition d USING stale WHERE d.name = stale.name
RETURNING d.name;
