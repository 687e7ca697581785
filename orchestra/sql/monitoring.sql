-- Read-only queries that report on the queue: the web dashboard's
-- (orchestra/dashboard/), the probes of `orchestra health`, and the metrics
-- gauges (orchestra/_orchestrator/_gauges.py, read by the leader every
-- gauges_interval_ms, default 15 s, and by a PrometheusHandler given the queue
-- when it is scraped). None takes a row lock or writes anything,
-- so that a dashboard role needs SELECT only. What the job management API
-- offers (one job, a page of jobs, counts by filter, definitions with their
-- counts) the dashboard takes from manage.sql.

-- == Dashboard ===============================================================

-- name: dashboard_job_counts
-- How many jobs each channel has in each status (the overview's table of
-- counts; statuses without jobs are absent): one grouped pass over the hot
-- table (unfinished jobs) and one over the history (finished jobs). A status
-- is in one table only, so no pair comes back twice. `scheduled` is an
-- available job whose run_at is still ahead (decision 0036): `available`
-- counts the jobs due now. Cost: the history's pass
-- scans every partition the retention keeps, at each load of the overview:
-- with a long retention of a busy queue, that is the overview's main cost.
SELECT j.channel, s.status, count(*) AS n
FROM {schema}.job j,
     LATERAL (SELECT CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status) s
GROUP BY j.channel, s.status
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
-- `channels` falls back to `channel` for the rows of workers older than
-- schema version 8.
SELECT w.id, w.name, w.role, w.host, w.pid, w.channel,
       coalesce(w.channels, CASE WHEN w.channel IS NOT NULL THEN ARRAY[w.channel] END)
           AS channels,
       w.concurrency, w.started_at, w.heartbeat_at,
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
     SELECT j.definition, CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status
     FROM {schema}.job j
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
     SELECT j.definition, CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status
     FROM {schema}.job j
     WHERE j.id = d.job_id
     UNION ALL
     SELECT h.definition, h.status::text FROM {schema}.job_history h
     WHERE h.id = d.job_id) w
 WHERE d.required_job_id = %(id)s
 ORDER BY d.job_id
 LIMIT %(limit)s);

-- name: leader_get
-- The orchestrator leader lease as the dashboard shows it.
SELECT holder, elected_at, expires_at, expires_at > clock_timestamp() AS live
FROM {schema}.leader WHERE name = %(name)s;

-- == Health probes and metrics gauges ========================================

-- name: health_heartbeats
-- Daemons of a role (on a host, with a name) and how fresh their heartbeats
-- are, on the database clock. The worker table holds one row per live daemon
-- (workers heartbeat every few seconds, orchestrators at each lease attempt).
SELECT count(*) FILTER (
           WHERE heartbeat_at >= clock_timestamp() - %(max_age_ms)s * interval '1 millisecond'
       ) AS fresh,
       count(*) AS registered,
       extract(epoch FROM clock_timestamp() - max(heartbeat_at))::float8 AS latest_age_s
FROM {schema}.worker
WHERE role = %(role)s
  AND (%(host)s::text IS NULL OR host = %(host)s::text)
  AND (%(name)s::text IS NULL OR name = %(name)s::text);

-- name: health_paused
-- The paused channels and definitions (a handful of rows at most), which
-- `orchestra health` lists: their jobs wait until they are resumed.
SELECT 'channel' AS kind, channel AS name FROM {schema}.channel_pause
UNION ALL
SELECT 'definition', name FROM {schema}.job_definition WHERE paused
ORDER BY 1, 2;

-- name: health_vacuum_horizon
-- What keeps autovacuum from cleaning the job table, in one row: the holder
-- of the oldest snapshot or transaction id on this database (a session, a
-- prepared transaction, or a replication slot's xmin, which holds back every
-- database), and the job table's live and dead row counts. Also read by the
-- orchestrator's gauges (metrics) and the dashboard's overview.
--
-- The query text of a session is never read: it may carry secrets. A role
-- without pg_read_all_stats (pg_monitor) sees other roles' backend_xmin but
-- not their xact_start or state: such a holder comes back with a NULL age_s
-- and hidden = true. The holder is the one whose snapshot is oldest in
-- transactions (what vacuum is held back by), then in time. Without any
-- holder every holder column is NULL; without statistics for the job table
-- its columns are NULL. Cost: a scan of pg_stat_activity (one row per
-- connection of the server); no lock on any queue table.
WITH holders AS (
    SELECT 'session' AS kind, a.pid, a.state, a.application_name,
           a.usename::text AS user_name, NULL::text AS name,
           extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS age_s,
           greatest(age(a.backend_xmin), age(a.backend_xid)) AS xid_age,
           NOT coalesce(pg_has_role('pg_read_all_stats', 'USAGE')
                        OR pg_has_role(a.usesysid, 'USAGE'), false) AS hidden
    FROM pg_stat_activity a
    WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
      AND a.pid <> pg_backend_pid()
      -- Sessions of other databases do not hold back this one's tables;
      -- a physical walsender (no database) does.
      AND (a.datname IS NULL OR a.datname = current_database())
    UNION ALL
    SELECT 'prepared', NULL, 'prepared', NULL, p.owner::text, p.gid,
           extract(epoch FROM clock_timestamp() - p.prepared)::float8,
           age(p.transaction), false
    FROM pg_prepared_xacts p
    WHERE p.database = current_database()
    UNION ALL
    SELECT 'replication_slot', s.active_pid, CASE WHEN s.active THEN 'active' ELSE 'inactive' END,
           NULL, NULL, s.slot_name::text, NULL, age(s.xmin), false
    FROM pg_replication_slots s
    WHERE s.xmin IS NOT NULL
), oldest AS (
    SELECT * FROM holders ORDER BY xid_age DESC NULLS LAST, age_s DESC NULLS LAST LIMIT 1
), job_table AS (
    SELECT t.n_live_tup, t.n_dead_tup, t.last_autovacuum, t.last_vacuum
    FROM pg_stat_user_tables t
    WHERE t.schemaname = %(schema)s AND t.relname = 'job'
)
SELECT o.kind, o.pid, o.state, o.application_name, o.user_name, o.name, o.age_s,
       o.xid_age, o.hidden,
       (SELECT count(*) FROM holders) AS holders,
       t.n_live_tup AS job_live_tuples, t.n_dead_tup AS job_dead_tuples,
       t.last_autovacuum AS job_last_autovacuum, t.last_vacuum AS job_last_vacuum
FROM (SELECT) AS one
LEFT JOIN oldest o ON true
LEFT JOIN job_table t ON true;

-- name: metrics_gauges
-- Unfinished jobs per status and channel, how long each channel's oldest due
-- job has waited, and live daemons per role, in one statement (one snapshot,
-- one round trip). Rows: (kind, label, channel, n, age_s) with kind
--   'depth'       label = status, n = its jobs: `available` counts the jobs
--                 due now, `scheduled` those whose run_at is ahead
--                 (delayed, or waiting for a retry's backoff; decision 0036);
--   'oldest_due'  age_s = seconds since the run_at of the channel's oldest
--                 available job whose run_at has passed (0 when none is due:
--                 jobs delayed into the future are not late); label, n NULL;
--   'workers'     label = role, n = its daemons; channel NULL.
-- Read by the leader's gauges service and, at scrape time, by
-- PrometheusHandler(queue=config) (orchestra/metrics.py).
--
-- Cost: the hot table holds unfinished jobs only (finished ones are in
-- job_history), so the pass is one scan of it and grows with the backlog, not
-- with the finished jobs the history keeps: a few ms for thousands of
-- unfinished jobs, about a second per few million. Finished statuses are not
-- counted: their rates are the job counters. The oldest due job is a min()
-- in that same pass (no index of the hot table has run_at, and one for this
-- alone would cost every insert and claim): about a third more than the
-- counts alone. Every channel of a definition is reported with its four
-- statuses and its oldest due job, 0 included, so a drained queue reads 0
-- rather than vanishing. The worker table is small.
WITH clock AS (
    SELECT coalesce(%(now)s::timestamptz, clock_timestamp()) AS now
), counted AS (
    SELECT s.status, j.channel, count(*) AS n,
           min(j.run_at) FILTER (WHERE j.status = 'available' AND j.run_at <= clock.now)
               AS oldest_due
    FROM {schema}.job j CROSS JOIN clock,
         LATERAL (SELECT CASE WHEN j.status = 'available' AND j.run_at > clock.now
                              THEN 'scheduled' ELSE j.status::text END AS status) s
    GROUP BY s.status, j.channel
), channels AS (
    SELECT channel FROM {schema}.job_definition
    UNION
    SELECT channel FROM counted
)
SELECT 'depth' AS kind, s.status AS label, c.channel, coalesce(counted.n, 0)::bigint AS n,
       NULL::float8 AS age_s
FROM channels c
CROSS JOIN unnest(ARRAY['waiting', 'scheduled', 'available', 'running']) AS s(status)
LEFT JOIN counted ON counted.status = s.status AND counted.channel = c.channel
UNION ALL
SELECT 'oldest_due', NULL, c.channel, NULL,
       coalesce(extract(epoch FROM clock.now - min(counted.oldest_due)), 0)::float8
FROM channels c
CROSS JOIN clock
LEFT JOIN counted ON counted.channel = c.channel
GROUP BY c.channel, clock.now
UNION ALL
SELECT 'workers', r.role, NULL, count(w.id), NULL
FROM unnest(ARRAY['worker', 'orchestrator']) AS r(role)
CROSS JOIN clock
LEFT JOIN {schema}.worker w
    ON w.role = r.role
    AND w.heartbeat_at >= clock.now - %(threshold_ms)s * interval '1 millisecond'
GROUP BY r.role
ORDER BY 1, 2, 3;

-- == Dashboard: search, selections and charts ===================================

-- name: dashboard_job_search
-- The jobs list's search: jobs whose payload (as JSON text) or last error
-- contains %(pattern)s (an ILIKE pattern whose wildcards the caller escaped
-- with a backslash), plus the job whose id is %(id)s (NULL: none), filtered
-- by status, definition and channel as manage_job_list_desc, a page of them
-- with the number found: the job of that id first (a number is most likely
-- an id), then newest first (or oldest first). %(tag)s (NULL: any) keeps the
-- jobs that carry that tag.
--
-- Bounded: the text is looked for only among the %(window)s newest jobs of
-- each table (hot and history), each read by a backward walk of its primary
-- key, so a search costs the same on a history of millions; the id is a
-- primary-key probe of each table, whatever its age. Payloads of those rows
-- are read and cast to text: a window of large payloads is the main cost.
WITH recent_hot AS MATERIALIZED (
    SELECT j.id, j.payload, j.last_error FROM {schema}.job j
    ORDER BY j.id DESC LIMIT %(window)s
), recent_finished AS MATERIALIZED (
    SELECT h.id, h.payload, h.last_error FROM {schema}.job_history h
    ORDER BY h.id DESC LIMIT %(window)s
), hot_hits AS (
    SELECT r.id FROM recent_hot r
    WHERE r.payload::text ILIKE %(pattern)s ESCAPE '\'
       OR r.last_error ILIKE %(pattern)s ESCAPE '\'
    UNION
    SELECT j.id FROM {schema}.job j WHERE j.id = %(id)s::bigint
), finished_hits AS (
    SELECT r.id FROM recent_finished r
    WHERE r.payload::text ILIKE %(pattern)s ESCAPE '\'
       OR r.last_error ILIKE %(pattern)s ESCAPE '\'
    UNION
    SELECT h.id FROM {schema}.job_history h WHERE h.id = %(id)s::bigint
), found AS (
    SELECT j.id, j.definition, j.channel,
           CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status,
           j.priority, j.payload, j.result,
           j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at, j.finalized_at,
           j.last_error, j.unique_key, j.resource_key, j.locked_by, j.tags, j.meta,
           j.progress, false AS in_history
    FROM {schema}.job j JOIN hot_hits USING (id)
    WHERE CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END
          = ANY(%(statuses)s::text[])
      AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
      AND (%(channel)s::text IS NULL OR j.channel = %(channel)s::text)
      AND (%(tag)s::text IS NULL OR (j.tags @> ARRAY[%(tag)s::text] AND j.tags <> '{{}}'))
    UNION ALL
    SELECT h.id, h.definition, h.channel, h.status::text, h.priority, h.payload, h.result,
           h.attempt, h.max_attempts, h.run_at, h.created_at, h.started_at, h.finalized_at,
           h.last_error, h.unique_key, h.resource_key, NULL::bigint, h.tags, h.meta,
           h.progress, true
    FROM {schema}.job_history h JOIN finished_hits USING (id)
    WHERE h.status::text = ANY(%(statuses)s::text[])
      AND (%(definition)s::text IS NULL OR h.definition = %(definition)s::text)
      AND (%(channel)s::text IS NULL OR h.channel = %(channel)s::text)
      AND (%(tag)s::text IS NULL OR (h.tags @> ARRAY[%(tag)s::text] AND h.tags <> '{{}}'))
)
-- One row even when the page is empty (its job columns NULL): the count is
-- still wanted.
SELECT c.total, p.*
FROM (SELECT count(*) AS total FROM found) c
LEFT JOIN LATERAL (
    SELECT f.id, f.definition, f.channel, f.status::text AS status, f.priority,
           f.payload::text, f.result::text, f.attempt, f.max_attempts, f.run_at,
           f.created_at, f.started_at, f.finalized_at, f.last_error, f.unique_key,
           f.resource_key, f.locked_by, f.tags, f.meta::text, f.progress::text,
           ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
                 WHERE d.job_id = f.id ORDER BY d.required_job_id) AS depends_on,
           NULL::jsonb AS attempts,
           f.in_history
    FROM found f
    ORDER BY f.id IS NOT DISTINCT FROM %(id)s::bigint DESC,
             CASE WHEN %(order)s = 'asc' THEN f.id END, f.id DESC
    LIMIT %(limit)s OFFSET %(offset)s
) p ON true;

-- name: dashboard_jobs_by_ids
-- The jobs of a selection (the bulk actions' confirmation page), from either
-- table, by id: a primary-key probe of each per id. Ids of no job are absent.
SELECT j.id, j.definition, j.channel,
       CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status,
       j.priority, j.payload::text,
       j.result::text, j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at,
       j.finalized_at, j.last_error, j.unique_key, j.resource_key, j.locked_by,
       j.tags, j.meta::text, j.progress::text,
       '{{}}'::bigint[] AS depends_on, NULL::jsonb AS attempts, false AS in_history
FROM {schema}.job j
WHERE j.id = ANY(%(ids)s::bigint[])
UNION ALL
SELECT h.id, h.definition, h.channel, h.status::text, h.priority, h.payload::text,
       h.result::text, h.attempt, h.max_attempts, h.run_at, h.created_at, h.started_at,
       h.finalized_at, h.last_error, h.unique_key, h.resource_key, NULL::bigint,
       h.tags, h.meta::text, h.progress::text,
       '{{}}'::bigint[], NULL::jsonb, true
FROM {schema}.job_history h
WHERE h.id = ANY(%(ids)s::bigint[])
ORDER BY 1;

-- name: dashboard_definition_failed
-- Whether a definition is stored, and how many of its jobs failed (the
-- confirmation page of "retry all failed"): no row when it is not stored.
-- Cost: failed jobs are all in the history, which has no index on definition
-- nor status: a scan of the partitions the retention keeps.
SELECT d.name,
       (SELECT count(*) FROM {schema}.job_history h
        WHERE h.definition = d.name AND h.status = 'failed') AS failed
FROM {schema}.job_definition d
WHERE d.name = %(definition)s;

-- name: dashboard_definition_throughput
-- Jobs finalized per definition and time bucket since %(since)s, by final
-- status: bucket n holds [since + n * bucket_s, since + (n + 1) * bucket_s).
-- Buckets without jobs are absent. Every finished job is in the history: a
-- range scan of job_history_finalized_idx over the window (each partition's
-- part of it), so the cost grows with the jobs finished in the window.
SELECT h.definition,
       floor(extract(epoch FROM h.finalized_at - %(since)s::timestamptz)
             / %(bucket_s)s)::integer AS bucket,
       count(*) FILTER (WHERE h.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE h.status = 'failed') AS failed,
       count(*) FILTER (WHERE h.status = 'cancelled') AS cancelled
FROM {schema}.job_history h
WHERE h.finalized_at >= %(since)s::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: dashboard_queue_wait
-- Queue wait (from when a job was due, run_at, to when its last attempt
-- started) of the jobs that started since %(since)s: per time bucket of their
-- start (definition NULL), and per definition over the whole window (bucket
-- NULL), with the median, the 95th percentile and the longest, in ms.
-- Finished jobs come from the history, found by finalized_at (a job finishes
-- after it starts: a range scan of job_history_finalized_idx); running ones
-- from the hot table (job_locked_by_idx holds exactly them). A wait below
-- zero (clocks of different hosts set run_at) counts as none.
WITH started AS (
    SELECT h.definition, h.started_at,
           greatest(extract(epoch FROM h.started_at - h.run_at) * 1000, 0) AS wait_ms
    FROM {schema}.job_history h
    WHERE h.finalized_at >= %(since)s::timestamptz
      AND h.started_at >= %(since)s::timestamptz
    UNION ALL
    SELECT j.definition, j.started_at,
           greatest(extract(epoch FROM j.started_at - j.run_at) * 1000, 0)
    FROM {schema}.job j
    WHERE j.status = 'running' AND j.started_at >= %(since)s::timestamptz
), bucketed AS (
    SELECT s.definition, s.wait_ms,
           floor(extract(epoch FROM s.started_at - %(since)s::timestamptz)
                 / %(bucket_s)s)::integer AS bucket
    FROM started s
)
SELECT b.definition, b.bucket, count(*) AS started,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY b.wait_ms))::bigint AS p50_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY b.wait_ms))::bigint AS p95_ms,
       round(max(b.wait_ms))::bigint AS max_ms
FROM bucketed b
GROUP BY GROUPING SETS ((b.bucket), (b.definition))
ORDER BY 1 NULLS FIRST, 2;

-- name: dashboard_due_waiting
-- Jobs due now and not yet claimed, per definition, and how long the oldest
-- of them has waited (ms): the queue wait that is still going on. A scan of
-- the hot table's available jobs (the backlog), as metrics_gauges does.
SELECT j.definition, count(*) AS due,
       (extract(epoch FROM clock_timestamp() - min(j.run_at)) * 1000)::bigint AS oldest_ms
FROM {schema}.job j
WHERE j.status = 'available' AND j.run_at <= clock_timestamp()
GROUP BY j.definition
ORDER BY j.definition;
