-- Read-only queries of the web dashboard (orchestra/dashboard/). Everything
-- the job management API offers (one job, a page of jobs, counts by filter,
-- definitions with their counts) comes from orchestra/_jobs.py and
-- manage.sql; these are what it does not offer. None takes a row lock or
-- writes anything, so that a dashboard role needs SELECT only.

-- name: dashboard_job_counts
-- How many jobs each channel has in each status, in one pass over the job
-- table (the overview's table of counts; statuses without jobs are absent).
SELECT j.channel, j.status::text AS status, count(*) AS n
FROM {schema}.job j
GROUP BY j.channel, j.status
ORDER BY j.channel, j.status;

-- name: dashboard_throughput
-- Jobs finalized per minute over the last hour, by final status: 60 buckets,
-- the last one the current (partial) minute, on the database clock. Jobs
-- swept into job_archive still count; a job is in exactly one of the two
-- tables. Both lookups are range scans of a finalized_at index.
WITH bounds AS (
    SELECT date_trunc('minute', clock_timestamp()) AS last_minute
), minutes AS (
    SELECT generate_series(b.last_minute - interval '59 minutes', b.last_minute,
                           interval '1 minute') AS minute
    FROM bounds b
), finished AS (
    SELECT date_trunc('minute', j.finalized_at) AS minute, j.status::text AS status
    FROM {schema}.job j, bounds b
    WHERE j.finalized_at >= b.last_minute - interval '59 minutes'
    UNION ALL
    SELECT date_trunc('minute', x.finalized_at), x.status::text
    FROM {schema}.job_archive x, bounds b
    WHERE x.finalized_at >= b.last_minute - interval '59 minutes'
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
-- job_locked_by_idx). A crashed daemon's row stays until the orchestrator's
-- rescuer removes it, so the age tells live from silent.
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
-- links. Both directions are served by an index of job_dependency.
(SELECT 'requires' AS relation, r.id, r.definition, r.status::text AS status
 FROM {schema}.job_dependency d JOIN {schema}.job r ON r.id = d.required_job_id
 WHERE d.job_id = %(id)s
 ORDER BY r.id
 LIMIT %(limit)s)
UNION ALL
(SELECT 'required_by', w.id, w.definition, w.status::text
 FROM {schema}.job_dependency d JOIN {schema}.job w ON w.id = d.job_id
 WHERE d.required_job_id = %(id)s
 ORDER BY w.id
 LIMIT %(limit)s);
