-- The worker's hot path (orchestra/_worker/): claims, finishes, and the lease
-- upkeep of the jobs it runs. A lane sends its finishes and its next claim as
-- one transaction in one pipeline (decision 0015). Notifications as in
-- producer.sql: one pg_notify per statement and channel.

-- name: transaction_begin
-- A lane's transaction, opened and committed as statements of its pipeline:
-- the whole lane write is one round trip (decision 0015).
BEGIN;

-- name: transaction_commit
COMMIT;

-- name: job_claim
-- Claim up to %(limit)s runnable jobs of the worker's channels (%(channels)s,
-- an array): higher priority first, then FIFO within a channel, and channels
-- of equal priority take turns (docs/decisions/0031). SKIP LOCKED lets concurrent
-- workers take disjoint batches. The lock is NO KEY UPDATE, which does not
-- conflict with the KEY SHARE lock that an open defer(depends_on=...) holds on
-- its dependencies; the MATERIALIZED CTEs make the LIMIT apply before the
-- UPDATE, so a worker never gets more rows than it asked for. Each claim
-- counts as an attempt.
--
-- Paused channels (channel_pause) are left out before any job is read;
-- jobs of paused definitions (job_definition.paused) are stepped over. Both
-- are read once per statement, so a pause takes effect at the next claim of
-- every worker, with no restart.
--
-- Fairness between channels: each channel is its own index scan of
-- job_claim_idx (a LATERAL per channel, locking up to %(limit)s of its jobs),
-- and the batch takes the candidates by priority, then by their turn within
-- their channel (1 for a channel's first job, 2 for its second ...), then by
-- the channel's place in %(channels)s, which the worker rotates by one at
-- every claim. So a backlog of old jobs in one channel cannot hold back
-- another channel's job of the same priority: both heads have turn 1, and of
-- k channels each comes first once every k claims (a claim of one job
-- alternates between two channels). A higher priority still goes first,
-- whatever its channel. Candidates that do not make the batch were locked
-- for nothing and are free again at the commit: with k channels that all
-- have jobs, a claim locks up to k times %(limit)s rows to take %(limit)s.
-- With one channel the batch is exactly what the single scan finds, by
-- priority then id.
--
-- Two branches: `plain` serves jobs without limits from job_claim_idx; `keyed`
-- serves resource-keyed jobs of unlimited definitions, taking a job only if it
-- heads its key (per channel) and no job of its key runs: at most one running
-- job per resource key, fleet-wide. A job held back by its key is simply not
-- taken: it spends nothing and nobody spins on it. Two channels of one worker
-- may each have a head of the same key: the batch keeps one of them (the
-- first by priority then id), or the unique index below would refuse the
-- whole claim again and again.
-- When no keyed job exists the keyed branch is an empty partial index scan.
-- Two workers can still race on one key from different channels: the unique
-- index job_resource_running_uniq then refuses the second UPDATE and the
-- worker claims again (its new snapshot sees the winner running).
--
-- The payload comes back as text: the worker decodes it in the job's own
-- attempt, so that a payload Python cannot decode (nested too deeply) fails
-- that job alone, not the whole claimed batch. So does meta, decoded only if
-- the job reads ctx.meta.
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
WITH paused AS MATERIALIZED (
    -- The definition table is small; `<> ALL` of an empty array is true.
    SELECT coalesce(array_agg(name), '{{}}') AS names
    FROM {schema}.job_definition WHERE paused
), served AS MATERIALIZED (
    SELECT c.channel, c.place FROM unnest(%(channels)s::text[]) WITH ORDINALITY AS c(channel, place)
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.channel_pause p WHERE p.channel = c.channel)
), plain AS MATERIALIZED (
    SELECT p.id, p.priority, s.place FROM served s
    CROSS JOIN LATERAL (
        SELECT id, priority FROM {schema}.job
        WHERE status = 'available' AND NOT limited AND channel = s.channel
          AND run_at <= coalesce(%(now)s::timestamptz, now())
          AND definition <> ALL ((SELECT names FROM paused)::text[])
        ORDER BY priority DESC, id
        LIMIT %(limit)s
        FOR NO KEY UPDATE SKIP LOCKED
    ) p
), keyed AS MATERIALIZED (
    SELECT k.id, k.priority, s.place, k.resource_key FROM served s
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.resource_key FROM {schema}.job j
        WHERE j.status = 'available' AND j.resource_key IS NOT NULL AND j.channel = s.channel
          AND j.run_at <= coalesce(%(now)s::timestamptz, now())
          AND j.definition <> ALL ((SELECT names FROM paused)::text[])
          AND NOT EXISTS (
              SELECT 1 FROM {schema}.job r
              WHERE r.resource_key = j.resource_key AND r.status = 'running')
          AND NOT EXISTS (
              SELECT 1 FROM {schema}.job o
              WHERE o.resource_key = j.resource_key AND o.channel = j.channel
                AND o.status = 'available' AND o.run_at <= coalesce(%(now)s::timestamptz, now())
                -- A paused definition's job does not hold its key's turn.
                AND o.definition <> ALL ((SELECT names FROM paused)::text[])
                AND (o.priority > j.priority OR (o.priority = j.priority AND o.id < j.id)))
          AND NOT EXISTS (
              SELECT 1 FROM {schema}.job_definition d
              WHERE d.name = j.definition
                AND (d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL))
        ORDER BY j.priority DESC, j.id
        LIMIT %(limit)s
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ) k
), candidates AS (
    SELECT id, priority, place FROM plain
    UNION ALL
    SELECT id, priority, place FROM (
        SELECT DISTINCT ON (resource_key) id, priority, place FROM keyed
        ORDER BY resource_key, priority DESC, id
    ) heads
), claimable AS (
    SELECT id FROM (
        SELECT id, priority, place,
               row_number() OVER (PARTITION BY place ORDER BY priority DESC, id) AS turn
        FROM candidates
    ) c
    ORDER BY priority DESC, turn, place
    LIMIT %(limit)s
)
-- The rows are found by `id = ANY(ARRAY(...))`, a primary-key scan: joined
-- with the claimed ids, the planner hash-joined them with a sequential scan
-- of the whole hot table whenever it held fewer than about 30,000 jobs.
UPDATE {schema}.job j
SET status = 'running',
    attempt = j.attempt + 1,
    locked_by = %(worker_id)s,
    lock_token = md5(%(claim_id)s || j.id::text)::uuid,
    -- A job whose definition row was swept between its insert and now keeps
    -- a lease of the default length (60 s), so that it can still be rescued.
    locked_until = clock_timestamp()
                   + coalesce((SELECT d.lock_interval_ms FROM {schema}.job_definition d
                               WHERE d.name = j.definition), 60000) * interval '1 millisecond',
    started_at = clock_timestamp()
WHERE j.id = ANY(ARRAY(SELECT id FROM claimable))
RETURNING j.id, j.definition, j.payload::text, j.attempt, j.max_attempts, j.lock_token,
          j.started_at, j.run_at, j.priority, j.trace_context, j.tags, j.meta::text;

-- name: definition_lock_limited
-- First statement of the guarded claim: lock the limited definitions this
-- worker serves (SKIP LOCKED: one another worker is releasing is skipped, not
-- waited for). The claim itself must be a second statement, so that its
-- snapshot is taken after the lock was granted and sees the claims of the
-- worker that held it before (a count of running jobs read in the same
-- statement could predate them). A paused definition is not locked:
-- job_claim_limited would take nothing of it.
SELECT name FROM {schema}.job_definition
WHERE name = ANY(%(definitions)s::text[])
  AND (release_interval_ms > 0 OR max_concurrency IS NOT NULL)
  AND NOT paused
FOR NO KEY UPDATE SKIP LOCKED;

-- name: job_claim_limited
-- Second statement of the guarded claim, in the same transaction, over the
-- definitions locked by definition_lock_limited: the limits are checked and
-- last_released_at set on one clock reading, so that starts are spaced by the
-- release interval fleet-wide, retries included, and running jobs never
-- exceed max_concurrency. Jobs held back spend nothing. Paused definitions
-- and the jobs of paused channels are left alone, as in job_claim (a job
-- keeps the channel it was deferred on, which may no longer be its
-- definition's, so the channel is checked on the job).
WITH t AS MATERIALIZED (
    SELECT clock_timestamp() AS ts,
           coalesce((SELECT array_agg(channel) FROM {schema}.channel_pause), '{{}}') AS stopped
), defs AS MATERIALIZED (
    SELECT d.name, d.release_interval_ms, d.max_concurrency
    FROM {schema}.job_definition d, t
    WHERE d.name = ANY(%(definitions)s::text[])
      AND NOT d.paused
      AND (d.release_interval_ms = 0 OR d.last_released_at IS NULL
           OR d.last_released_at + d.release_interval_ms * interval '1 millisecond' <= t.ts)
), budget AS MATERIALIZED (
    SELECT defs.name,
           least(CASE WHEN defs.release_interval_ms > 0 THEN 1 ELSE %(limit)s END,
                 coalesce(defs.max_concurrency - (
                     SELECT count(*) FROM {schema}.job r
                     WHERE r.definition = defs.name AND r.status = 'running'), %(limit)s)) AS n
    FROM defs
), candidates AS MATERIALIZED (
    SELECT j.id, j.definition, j.priority, j.resource_key FROM budget b
    CROSS JOIN LATERAL (
        SELECT id, definition, priority, resource_key FROM {schema}.job
        WHERE definition = b.name AND status = 'available' AND limited
          AND run_at <= (SELECT ts FROM t)
          AND channel <> ALL ((SELECT stopped FROM t)::text[])
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
                    -- A paused definition's job does not hold its key's turn.
                    AND NOT EXISTS (
                        SELECT 1 FROM {schema}.job_definition pd
                        WHERE pd.name = o.definition AND pd.paused)
                    AND (o.priority > job.priority
                         OR (o.priority = job.priority AND o.id < job.id)))))
        ORDER BY priority DESC, id
        LIMIT greatest(b.n, 0)
        FOR NO KEY UPDATE SKIP LOCKED
    ) j
), picked AS MATERIALIZED (
    -- One job per resource key: the heads of one key on two channels of
    -- the worker (each the head of its channel) must not both be claimed.
    SELECT id, definition FROM (
        SELECT DISTINCT ON (resource_key, CASE WHEN resource_key IS NULL THEN id END)
               id, definition, priority
        FROM candidates
        ORDER BY resource_key, CASE WHEN resource_key IS NULL THEN id END, priority DESC, id
    ) one
    ORDER BY priority DESC, id
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
    locked_until = (SELECT ts FROM t)
                   + coalesce((SELECT d.lock_interval_ms FROM {schema}.job_definition d
                               WHERE d.name = j.definition), 60000) * interval '1 millisecond',
    started_at = (SELECT ts FROM t)
-- A primary-key scan, as in job_claim.
WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
RETURNING j.id, j.definition, j.payload::text, j.attempt, j.max_attempts, j.lock_token,
          j.started_at, j.run_at, j.priority, j.trace_context, j.tags, j.meta::text;

-- name: job_finish_many
-- Record the end of many attempts in one statement. Each row is fenced by
-- (id, attempt, lock_token): an attempt that was rescued or finalized
-- meanwhile changes nothing and is simply not returned. Outcomes:
--   succeeded    -> succeeded, result stored: the job moves to job_history
--   failed       -> available after retry_delay_ms while attempts remain,
--                   else failed and moved to job_history
--   interrupted  -> like failed (the worker stopped before the job finished)
--   timed_out    -> like failed (the attempt ran past attempt_timeout_ms)
--   released     -> available after retry_delay_ms, attempt refunded, no log row
--   snoozed      -> available after retry_delay_ms (the snooze), attempt
--                   refunded, logged (the error column says for how long);
--                   last_error is kept, and the job never ends here
-- (A cancelled attempt is not written: the cancel recorded it.)
-- A progress value that the attempt reported last and the progress writer had
-- not written yet (its rate limit) is written here, on either path; NULL
-- keeps what the row holds.
-- A job that ends leaves the hot table here (decision 0019): its row is
-- deleted and inserted into job_history with its earlier attempts' log rows
-- (moved too) as JSON. A success writes no attempt-log row: the history row
-- is its record. An attempt that does not end the job is logged in
-- job_attempt as before.
-- The release of dependents is job_release_dependents, run right after it
-- in the same pipeline (see there why it must be a second statement).
-- The arrays are sent in binary format: text arrays are quoted element by
-- element in Python, which was the largest cost per finished job in a profile.
WITH input AS (
    SELECT * FROM unnest(
        %(ids)b::bigint[], %(attempts)b::integer[], %(tokens)b::uuid[], %(outcomes)b::text[],
        %(results)b::text[]::jsonb[], %(errors)b::text[], %(tracebacks)b::text[],
        %(retry_delays_ms)b::bigint[], %(started_ats)b::timestamptz[],
        %(progresses)b::text[]::jsonb[]
    ) AS i(id, attempt, token, outcome, result, error, traceback, retry_delay_ms, started_at,
           progress)
), held AS MATERIALIZED (
    -- Which attempts end their job. Read without a lock: the UPDATE and the
    -- DELETE below re-check the fence on the row they lock. A scalar
    -- subquery per id, so that each is a primary-key probe: as a join, the
    -- planner hash-joined the input with a sequential scan of the whole hot
    -- table (a backlog of 20,000 jobs read for every batch of finishes).
    -- A lock token is set exactly while the job runs (a CHECK says so), so
    -- the token match is the status check. NULL: the fence refuses it.
    SELECT i.*, (i.outcome = 'succeeded'
                 OR (i.outcome NOT IN ('released', 'snoozed') AND i.exhausted)) AS ends
    FROM (
        SELECT input.*,
               (SELECT j.attempt >= j.max_attempts FROM {schema}.job j
                WHERE j.id = input.id AND j.attempt = input.attempt
                  AND j.lock_token = input.token) AS exhausted
        FROM input
        OFFSET 0  -- evaluated once per row, not once per use
    ) i
    WHERE i.exhausted IS NOT NULL
), retried AS (
    UPDATE {schema}.job j
    SET status = 'available',
        -- A hand-back or a snooze spends no attempt (decision 0002; 0035).
        attempt = CASE WHEN h.outcome IN ('released', 'snoozed') THEN j.attempt - 1
                       ELSE j.attempt END,
        last_error = CASE WHEN h.outcome IN ('released', 'snoozed') THEN j.last_error
                          ELSE h.error END,
        run_at = clock_timestamp() + h.retry_delay_ms * interval '1 millisecond',
        locked_by = NULL, lock_token = NULL, locked_until = NULL,
        progress = coalesce(h.progress, j.progress)
    FROM held h
    -- id = ANY(ARRAY(...)) makes the rows a primary-key scan (see held).
    WHERE j.id = ANY(ARRAY(SELECT id FROM held WHERE NOT ends))
      AND NOT h.ends AND j.id = h.id AND j.attempt = h.attempt AND j.lock_token = h.token
    RETURNING j.id, j.status, j.run_at, j.channel, j.resource_key
), ended AS (
    DELETE FROM {schema}.job j
    USING held h
    WHERE j.id = ANY(ARRAY(SELECT id FROM held WHERE ends))
      AND h.ends AND j.id = h.id AND j.attempt = h.attempt AND j.lock_token = h.token
    RETURNING j.*, h.outcome, h.result AS new_result, h.error, h.traceback,
              h.started_at AS attempt_started_at, h.progress AS new_progress
), earlier AS (
    -- Attempt-log rows exist only for jobs that failed before: for most
    -- ended jobs this is one empty primary-key probe.
    DELETE FROM {schema}.job_attempt a USING ended e WHERE a.job_id = e.id
    RETURNING a.*
), historied AS (
    INSERT INTO {schema}.job_history (
        id, definition, channel, status, priority, payload, result, attempt, max_attempts,
        run_at, unique_key, resource_key, tick_at, created_at, started_at, finalized_at,
        last_error, attempts, trace_context, created_by, worker_id, worker_name, lock_token,
        tags, meta, progress)
    SELECT e.id, e.definition, e.channel,
           CASE WHEN e.outcome = 'succeeded' THEN 'succeeded' ELSE 'failed' END::{schema}.job_status,
           e.priority, e.payload,
           CASE WHEN e.outcome = 'succeeded' THEN e.new_result END,
           e.attempt, e.max_attempts, e.run_at, e.unique_key, e.resource_key, e.tick_at,
           e.created_at, e.attempt_started_at, clock_timestamp(),
           CASE WHEN e.outcome = 'succeeded' THEN e.last_error ELSE e.error END,
           coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                     FROM earlier a WHERE a.job_id = e.id), '[]'::jsonb)
           || CASE WHEN e.outcome = 'succeeded' THEN '[]'::jsonb
                   ELSE jsonb_build_array(jsonb_build_object(
                       'attempt', e.attempt, 'worker_id', %(worker_id)s::bigint,
                       'worker_name', %(worker_name)s::text,
                       'started_at', e.attempt_started_at, 'finished_at', clock_timestamp(),
                       'outcome', e.outcome, 'error', e.error, 'traceback', e.traceback,
                       'lock_token', e.lock_token)) END,
           e.trace_context, e.created_by, %(worker_id)s, %(worker_name)s, e.lock_token,
           e.tags, e.meta, coalesce(e.new_progress, e.progress)
    FROM ended e
    RETURNING id, status, run_at, channel, resource_key
), finished AS (
    SELECT * FROM retried UNION ALL SELECT * FROM historied
), dependents AS (
    -- The waiting jobs that depend on a job succeeding here, locked (in id
    -- order) until commit: two workers finishing two dependencies of one job
    -- at once then take turns, and the second one's job_release_dependents
    -- (a later statement, a later snapshot) sees the first one's finish.
    -- Without the lock each release saw the other dependency unfinished,
    -- and the job waited for the orchestrator's catch-up.
    SELECT w.id FROM {schema}.job w
    WHERE w.status = 'waiting'
      AND w.id IN (SELECT d.job_id FROM {schema}.job_dependency d
                   WHERE d.required_job_id IN (SELECT id FROM held WHERE outcome = 'succeeded'))
    ORDER BY w.id
    FOR NO KEY UPDATE
), logged AS (
    INSERT INTO {schema}.job_attempt
        (job_id, attempt, worker_id, worker_name, started_at, outcome, error, traceback,
         lock_token)
    SELECT h.id, h.attempt, %(worker_id)s, %(worker_name)s, h.started_at, h.outcome,
           h.error, h.traceback, h.token
    FROM held h JOIN retried r ON r.id = h.id
    WHERE h.outcome <> 'released'
), woken AS (
    -- Retries are runnable again, and a freed resource key lets the next job
    -- of that key run, on whatever channel it waits: wake each channel once.
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT channel FROM retried
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
    FROM (SELECT string_agg(id::text, ',') AS ids FROM historied) f
    WHERE ids IS NOT NULL
)
SELECT f.id, f.status::text AS status, f.run_at, (SELECT n FROM woken) AS woken,
       (SELECT n FROM done) AS done, (SELECT count(*) FROM dependents) AS dependents
FROM finished f;

-- name: job_release_dependents
-- Make available the waiting dependents of the given (just succeeded) jobs
-- whose dependencies have all succeeded, and wake their channels. Runs as a
-- second statement right after job_finish_many (pipelined, so no extra round
-- trip): the first one locked the finished rows, waiting for any defer that was
-- re-checking them, and moved them into the history, so this statement's
-- fresh snapshot sees every dependent committed before that. Ids whose finish
-- was refused are harmless: their dependents still have an unsucceeded
-- dependency. Most finished jobs have no dependents: then this is one empty
-- probe of job_dependency_required_idx per id.
WITH released AS (
    UPDATE {schema}.job w SET status = 'available'
    WHERE w.status = 'waiting'
      AND w.id IN (SELECT d.job_id FROM {schema}.job_dependency d
                   WHERE d.required_job_id = ANY(%(ids)s::bigint[]))
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job_dependency d
          WHERE d.job_id = w.id
            AND NOT EXISTS (SELECT 1 FROM {schema}.job_history h
                            WHERE h.id = d.required_job_id AND h.status = 'succeeded'))
    RETURNING w.id, w.channel
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM released) c
)
SELECT id, (SELECT n FROM woken) FROM released;

-- name: job_dependency_results
-- What a running job reads of the jobs it depends on (ctx.dependency_results,
-- and the parent of a child process answering its child): one row per
-- dependency edge, by dependency id, with the dependency's status and result
-- as text (decoded in Python, as payloads are). The edges of an unfinished
-- job are kept (decision 0019), so every dependency is listed; one the
-- history no longer holds (past its retention) comes back with a NULL
-- status, one retried since the job was released with its unfinished status
-- and no result. A primary-key probe of job_dependency, then one of the
-- history (one partition) and one of the hot table per dependency.
SELECT d.required_job_id AS id, r.status, r.result
FROM {schema}.job_dependency d
LEFT JOIN LATERAL (
    SELECT h.status::text AS status, h.result::text AS result
    FROM {schema}.job_history h WHERE h.id = d.required_job_id
    UNION ALL
    SELECT j.status::text, NULL FROM {schema}.job j WHERE j.id = d.required_job_id
) r ON true
WHERE d.job_id = %(id)s
ORDER BY d.required_job_id;

-- name: job_claim_recover
-- The jobs that a claim of this worker took, when its connection broke before
-- the claimed rows came back (the commit may or may not have happened): the
-- lock tokens derive from the claim's %(claim_id)s (see job_claim).
SELECT j.id, j.definition, j.payload::text, j.attempt, j.max_attempts, j.lock_token,
       j.started_at, j.run_at, j.priority, j.trace_context, j.tags, j.meta::text
FROM {schema}.job j
WHERE j.status = 'running' AND j.locked_by = %(worker_id)s
  AND j.lock_token = md5(%(claim_id)s || j.id::text)::uuid;

-- name: job_finish_recorded
-- Which of the given finishes are recorded, when the connection broke before
-- job_finish_many's rows came back: an attempt row (a retry) or a history row
-- (the end of the job) with the attempt's lock token exists exactly when its
-- finish committed. Returns, per recorded
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
    SELECT h.finalized_at FROM {schema}.job_history h
    WHERE i.outcome <> 'released'
      AND h.id = i.id AND h.attempt = i.attempt AND h.lock_token = i.token
    UNION ALL
    SELECT j.run_at FROM {schema}.job j
    WHERE i.outcome = 'released'
      AND j.id = i.id AND j.attempt = i.attempt - 1 AND j.status = 'available'
    LIMIT 1
) a ON true;

-- name: worker_heartbeat
-- Record that the worker is alive and extend the lease of the jobs it is
-- still running, in one statement. The lock token fences the extension: a job
-- that was rescued meanwhile is not taken back. Returns one row: whether the
-- worker row still exists, how many leases were extended, and the held jobs
-- (ids and the tokens sent) that were cancelled while they ran: the worker
-- stops their attempts. A cancel also notifies the worker at once
-- (manage_job_cancel); this is the fallback for a worker without LISTEN, or
-- one that missed the notification. Only the held jobs whose lease was not
-- extended are looked up in the history, so a heartbeat of a worker none of
-- whose jobs was cancelled reads nothing more.
WITH alive AS MATERIALIZED (
    SELECT {schema}.worker_touch(%(worker_id)s, %(secret)s) AS alive
), held AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS held(id, token)
), extended AS (
    UPDATE {schema}.job j
    SET locked_until = clock_timestamp() + d.lock_interval_ms * interval '1 millisecond'
    FROM held, {schema}.job_definition d
    WHERE j.id = held.id AND j.lock_token = held.token AND j.status = 'running'
      AND d.name = j.definition
    RETURNING j.id
), cancelled AS MATERIALIZED (
    SELECT held.id, held.token FROM held
    WHERE held.id NOT IN (SELECT id FROM extended)
      AND EXISTS (SELECT 1 FROM {schema}.job_history h
                  WHERE h.id = held.id AND h.status = 'cancelled')
)
SELECT (SELECT alive FROM alive) AS alive, (SELECT count(*) FROM extended) AS extended,
       ARRAY(SELECT id FROM cancelled ORDER BY id) AS cancelled_ids,
       ARRAY(SELECT token FROM cancelled ORDER BY id) AS cancelled_tokens;

-- name: job_progress_set
-- Write the progress that running attempts reported (JobContext.set_progress),
-- batched: the worker's progress writer sends at most one statement per 0.5 s,
-- with the latest value of each attempt. Fenced by the attempt's lock token,
-- which is set exactly while it runs: an attempt that ended, was rescued or was
-- cancelled writes nothing. Rows locked by someone else (a finish, a
-- heartbeat, a cancel in flight) are skipped, not waited for (SKIP LOCKED): a
-- progress write never holds up the hot path, and taking the rows in no
-- particular order could not deadlock with a statement taking them in
-- another. progress is in no index, so the update can be HOT. Returns the
-- ids written, and those skipped while their attempt still runs (`busy`),
-- which the writer tries again at its next pass.
WITH input AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(progresses)s::text[]::jsonb[])
        AS i(id, token, progress)
), locked AS MATERIALIZED (
    SELECT j.id FROM {schema}.job j
    WHERE j.id = ANY(ARRAY(SELECT id FROM input))
      AND j.lock_token = (SELECT i.token FROM input i WHERE i.id = j.id LIMIT 1)
    FOR NO KEY UPDATE SKIP LOCKED
), written AS (
    UPDATE {schema}.job j SET progress = i.progress
    FROM input i
    WHERE j.id = ANY(ARRAY(SELECT id FROM locked)) AND j.id = i.id AND j.lock_token = i.token
    RETURNING j.id
)
SELECT ARRAY(SELECT id FROM written) AS written,
       ARRAY(SELECT i.id FROM input i
             WHERE i.id NOT IN (SELECT id FROM written)
               AND EXISTS (SELECT 1 FROM {schema}.job j
                           WHERE j.id = i.id AND j.lock_token = i.token)) AS busy;
