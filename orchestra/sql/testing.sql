-- Queries of orchestra.testing, the helpers for the tests of applications.

-- name: job_count_unfinished
-- Jobs of a channel that are due now and not finalized (waiting ones included).
SELECT count(*) FROM {schema}.job
WHERE channel = %(channel)s AND run_at <= now();

-- name: testing_job_claim
-- The next job that orchestra.testing runs in the calling thread (drain,
-- inline): one job of the given definitions, highest priority first, then
-- FIFO, as job_claim orders them; only of %(channels)s, of %(ids)s and up to
-- id %(max_id)s when those are given (not NULL); due by %(until)s (NULL: now;
-- 'infinity' treats every job as due). A job whose resource key a running job
-- holds is left alone, as job_claim leaves it. Rate limits and
-- max_concurrency are not checked: the runner runs one job at a time. The row
-- is claimed as job_claim claims it: the attempt counts, the lock token
-- derives from %(claim_id)s, the lease is the definition's.
WITH picked AS MATERIALIZED (
    SELECT j.id FROM {schema}.job j
    WHERE j.status = 'available'
      AND j.definition = ANY(%(definitions)s::text[])
      AND (%(channels)s::text[] IS NULL OR j.channel = ANY(%(channels)s::text[]))
      AND (%(ids)s::bigint[] IS NULL OR j.id = ANY(%(ids)s::bigint[]))
      AND (%(max_id)s::bigint IS NULL OR j.id <= %(max_id)s::bigint)
      AND j.run_at <= coalesce(%(until)s::timestamptz, now())
      AND (j.resource_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM {schema}.job r
          WHERE r.resource_key = j.resource_key AND r.status = 'running'))
    ORDER BY j.priority DESC, j.id
    LIMIT 1
    FOR NO KEY UPDATE OF j SKIP LOCKED
)
UPDATE {schema}.job j
SET status = 'running',
    attempt = j.attempt + 1,
    locked_by = %(worker_id)s,
    lock_token = md5(%(claim_id)s || j.id::text)::uuid,
    locked_until = clock_timestamp()
                   + coalesce((SELECT d.lock_interval_ms FROM {schema}.job_definition d
                               WHERE d.name = j.definition), 60000) * interval '1 millisecond',
    started_at = clock_timestamp()
WHERE j.id = (SELECT id FROM picked)
RETURNING j.id, j.definition, j.payload::text AS payload, j.attempt, j.max_attempts,
          j.lock_token AS token, j.started_at, j.run_at, j.priority, j.trace_context, j.tags,
          j.meta::text AS meta;

-- name: testing_job_max_id
-- The newest job id of the queue (0 when it is empty): drain without recursion
-- runs the jobs up to it only.
SELECT coalesce(max(id), 0) FROM {schema}.job;

-- name: testing_jobs_left
-- What a drain left of the given definitions (and channels, when given): jobs
-- available but not run (due later, or deferred during a drain without
-- recursion), and jobs waiting for their dependencies.
SELECT count(*) FILTER (WHERE status = 'available') AS available,
       count(*) FILTER (WHERE status = 'waiting') AS waiting
FROM {schema}.job
WHERE definition = ANY(%(definitions)s::text[])
  AND (%(channels)s::text[] IS NULL OR channel = ANY(%(channels)s::text[]));
