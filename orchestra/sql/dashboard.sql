-- Read-only queries of the web dashboard (orchestra/dashboard/). Everything
-- the job management API offers (one job, a page of jobs, counts by filter,
-- definitions with their counts) comes from orchestra/_jobs.py and
-- manage.sql; these are what it does not offer. None takes a row lock or
-- writes anything, so that a dashboard role needs SELECT only.

-- name: dashboard_job_counts
-- How many jobs each channel has in each status (the overview's table of
-- counts; statuses without jobs are absent): one grouped pass over the hot
-- table (unfinished jobs) and one over the history (finished jobs). A status
-- is in one table only, so no pair comes back twice. Cost: the history's pass
-- scans every partition the retention keeps, at each load of the overview:
-- with a long retention of a busy queue, that is the overview's main cost.
SELECT j.channel, j.status::text AS status, count(*) AS n
FROM {schema}.job j
GROUP BY j.channel, j.status
UNION ALL
SELECT h.channel, h.status::text, count(*)
FROM {schema}.job_history h
GROUP BY h.channel, h.status
ORDER BY 1, 2;

-- name: dashboard_throughput
-- Jobs finalized per minute over the last hour, by final status: 60 buckets,
-- the last one the current (partial) minute, on the database clock. Every
-- finished job is in the history: a range scan of job_history_finalized_idx
-- (each partition's part of it).
WITH bounds AS (
    SELECT date_trunc('minute', clock_timestamp()) AS last_minute
), minutes AS (
    SELECT generate_series(b.last_minute - interval '59 minutes', b.last_minute,
                           interval '1 minute') AS minute
    FROM bounds b
), finished AS (
    SELECT date_trunc('minute', h.finalized_at) AS minute, h.status::text AS status
    FROM {schema}.job_history h, bounds b
    WHERE h.finalized_at >= b.last_minute - interval '59 minutes'
)
SELECT m.minute,
       count(f.status) FILTER (WHERE f.status = 'succeeded') AS succeeded,
       count(f.status) FILTER (WHERE f.status = 'failed') AS failed,
       count(f.status) FILTER (WHERE f.status = 'cancelled') AS cancelled
FROM minutes m LEFT JOIN finished f ON f.minute = m.minute
GROUP BY m.minute
ORDER BY m.minute;

-- name: dashboard_workers
-- Every daemon registered in the worker table, with the age of its heartbeat
-- on the database clock and how many jobs it is running now (through
-- job_locked_by_idx: running jobs are in the hot table). A crashed daemon's
-- row stays until the orchestrator's rescuer removes it, so the age tells
-- live from silent.
SELECT w.id, w.name, w.role, w.host, w.pid, w.channel, w.concurrency, w.started_at,
       w.heartbeat_at,
       (extract(epoch FROM clock_timestamp() - w.heartbeat_at) * 1000)::bigint AS heartbeat_age_ms,
       (SELECT count(*) FROM {schema}.job j
        WHERE j.locked_by = w.id AND j.status = 'running') AS running
FROM {schema}.worker w
ORDER BY w.role DESC, w.name, w.id;

-- name: dashboard_job_links
-- The jobs one job depends on (`requires`) and the jobs that depend on it
-- (`required_by`), with their definition and status, for the job page's
-- links. Both directions are served by an index of job_dependency; each id is
-- looked up in the hot table and the history (a primary-key probe each). An
-- id in neither (no longer kept by the history) is left out: the job's
-- depends_on still lists it.
(SELECT 'requires' AS relation, d.required_job_id AS id, r.definition, r.status
 FROM {schema}.job_dependency d
 CROSS JOIN LATERAL (
     SELECT j.definition, j.status::text AS status FROM {schema}.job j
     WHERE j.id = d.required_job_id
     UNION ALL
     SELECT h.definition, h.status::text FROM {schema}.job_history h
     WHERE h.id = d.required_job_id) r
 WHERE d.job_id = %(id)s
 ORDER BY d.required_job_id
 LIMIT %(limit)s)
UNION ALL
(SELECT 'required_by', d.job_id, w.definition, w.status
 FROM {schema}.job_dependency d
 CROSS JOIN LATERAL (
     SELECT j.definition, j.status::text AS status FROM {schema}.job j
     WHERE j.id = d.job_id
     UNION ALL
     SELECT h.definition, h.status::text FROM {schema}.job_history h
     WHERE h.id = d.job_id) w
 WHERE d.required_job_id = %(id)s
 ORDER BY d.job_id
 LIMIT %(limit)s);
