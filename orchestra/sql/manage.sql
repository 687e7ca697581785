-- Queries of the job management API (orchestra/_jobs.py: Config.jobs and
-- Config.jobs_async, and the `orchestra jobs` / `orchestra definitions`
-- commands): find and list jobs; retry, cancel and delete them, failed ones
-- also in bulk; and of pausing (orchestra/_pause.py: Config.channels and
-- Config.definitions, `orchestra pause` / `orchestra resume`).
--
-- Where jobs are (decision 0019): an unfinished job (waiting, available,
-- running) is a row of the hot table `job`, with its attempt-log rows in
-- `job_attempt`; a finished one (succeeded, failed, cancelled) is a row of
-- `job_history`, its attempt log in the row's `attempts` JSON. A job moves in
-- one statement, so every statement sees it in exactly one of the two tables.
-- Reads apply no hidden time window: they see every job the tables hold,
-- however old (the history keeps finished jobs for the orchestrator's
-- retention).
--
-- Every statement that changes a job is ONE statement that locks the job's row
-- and re-checks its state, so it cannot race a worker that claims or finishes
-- the same job at the same moment: the row lock makes one of the two wait, and
-- the re-check sees what the other committed. Each returns the state it found
-- (`status`, NULL when the id is in neither table) and whether it acted
-- (`done`), so that Python can tell an unknown id from a job in the wrong state
-- without a second, racy read. One case needs a second statement: a job that
-- moved to the other table while the statement waited for its row lock (a
-- worker finished it, someone cancelled or retried it) is found in neither by
-- that statement's snapshot; Python then runs the statement once more, and its
-- new snapshot sees where the job went.
--
-- Wake-ups as in producer.sql and worker.sql: one pg_notify per statement and
-- channel on the workers' channel (identical notifications of a transaction
-- are folded into one), and the finalized job ids on the result waiters'
-- channel.
--
-- The attempt log of a finished job: `attempts` holds every attempt that did
-- not succeed; a success has no entry there, its history row is its record
-- (worker_id, worker_name, started_at, finalized_at, lock_token; the
-- migration of 0007 folded the success entries of older jobs into those
-- columns too). manage_job_get and manage_job_retry add that entry from the
-- row's columns with the same expression (as the view all_job_attempts does).

-- name: manage_job_get
-- Payloads and results come back as text, decoded row by row in Python: one
-- value Python cannot decode (nested too deeply) must not fail a whole list.
-- One job by id, from the hot table or the history (one primary-key probe
-- each; the history's probe reads one partition), with its attempt log when
-- asked: live attempt-log rows aggregated to JSON as the history stores them
-- (to_jsonb of a job_attempt row), so one Python function reads both. Its
-- dependency edges stay after it finished, until its history partition is
-- dropped.
SELECT j.id, j.definition, j.channel,
       CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status,
       j.priority, j.payload::text,
       j.result::text, j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at,
       j.finalized_at, j.last_error, j.unique_key, j.resource_key, j.locked_by,
       j.tags, j.meta::text, j.progress::text,
       ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
             WHERE d.job_id = j.id ORDER BY d.required_job_id) AS depends_on,
       CASE WHEN %(with_attempts)s::boolean THEN coalesce(
           (SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
            FROM {schema}.job_attempt a WHERE a.job_id = j.id),
           '[]'::jsonb) END AS attempts,
       false AS in_history
FROM {schema}.job j
WHERE j.id = %(id)s
UNION ALL
SELECT h.id, h.definition, h.channel, h.status::text, h.priority, h.payload::text,
       h.result::text, h.attempt, h.max_attempts, h.run_at, h.created_at, h.started_at,
       h.finalized_at, h.last_error, h.unique_key, h.resource_key, NULL::bigint,
       h.tags, h.meta::text, h.progress::text,
       ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
             WHERE d.job_id = h.id ORDER BY d.required_job_id),
       CASE WHEN %(with_attempts)s::boolean THEN h.attempts
           || CASE WHEN h.status = 'succeeded' THEN jsonb_build_array(jsonb_build_object(
                       'attempt', h.attempt, 'worker_id', h.worker_id,
                       'worker_name', h.worker_name,
                       'started_at', coalesce(h.started_at, h.finalized_at),
                       'finished_at', h.finalized_at, 'outcome', 'succeeded',
                       'error', NULL, 'traceback', NULL, 'lock_token', h.lock_token))
                   ELSE '[]'::jsonb END
       END,
       true
FROM {schema}.job_history h
WHERE h.id = %(id)s;

-- name: manage_job_graph
-- The dependency graph around one job (Jobs.graph: `orchestra jobs show`, the
-- dashboard's job page): the job, the jobs it depends on, theirs in turn
-- (`upstream`), and the jobs that depend on it, down to the last (`downstream`),
-- each with its definition and status, and, per job, the jobs of the graph it
-- depends on (its edges). Each direction is a breadth-first walk of
-- job_dependency (its primary key upstream, job_dependency_required_idx
-- downstream); UNION keeps each job once however many paths lead to it, so
-- a diamond costs no more than its jobs; each step is an index probe per job
-- (the LATERAL with OFFSET 0 keeps the planner from hash-joining the whole
-- edge table instead, as it did on a small one). A walk is read lazily: the LIMIT
-- stops it after %(limit)s jobs, the nearest first, and a second read of one
-- more says whether it was cut. Edges stay after their jobs finished (until
-- the history drops the dependent), so a finished workflow is drawn whole
-- while the history keeps it; a job it no longer keeps has no definition and
-- no status. Dependencies always have smaller ids than their dependents, so
-- the walks cannot loop.
WITH RECURSIVE upstream(id) AS (
    SELECT d.required_job_id FROM {schema}.job_dependency d WHERE d.job_id = %(id)s
    UNION
    SELECT d.required_job_id FROM upstream u
    CROSS JOIN LATERAL (SELECT e.required_job_id FROM {schema}.job_dependency e
                        WHERE e.job_id = u.id OFFSET 0) d
), downstream(id) AS (
    SELECT d.job_id FROM {schema}.job_dependency d WHERE d.required_job_id = %(id)s
    UNION
    SELECT d.job_id FROM downstream w
    CROSS JOIN LATERAL (SELECT e.job_id FROM {schema}.job_dependency e
                        WHERE e.required_job_id = w.id OFFSET 0) d
), nodes AS MATERIALIZED (
    SELECT %(id)s::bigint AS id, 'self' AS side
    UNION ALL
    (SELECT id, 'upstream' FROM upstream LIMIT %(limit)s)
    UNION ALL
    (SELECT id, 'downstream' FROM downstream LIMIT %(limit)s)
)
SELECT n.id, n.side, s.definition, s.status,
       ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
             WHERE d.job_id = n.id AND d.required_job_id IN (SELECT id FROM nodes)
             ORDER BY d.required_job_id) AS depends_on,
       (SELECT count(*) FROM (SELECT 1 FROM upstream LIMIT %(limit)s + 1) u)
           > %(limit)s AS upstream_cut,
       (SELECT count(*) FROM (SELECT 1 FROM downstream LIMIT %(limit)s + 1) w)
           > %(limit)s AS downstream_cut
FROM nodes n
LEFT JOIN LATERAL (
    SELECT j.definition, CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status
    FROM {schema}.job j WHERE j.id = n.id
    UNION ALL
    SELECT h.definition, h.status::text FROM {schema}.job_history h WHERE h.id = n.id
) s ON true
ORDER BY CASE n.side WHEN 'self' THEN 0 WHEN 'upstream' THEN 1 ELSE 2 END, n.id;

-- name: manage_job_list_asc
-- A page of jobs: any statuses, optionally one definition, one channel
-- and/or one tag, oldest first, from both tables. Each side is read in id order up to
-- %(window)s rows (limit + offset: no more can precede the end of the page)
-- and the two are merged, so that the planner walks each primary key in order
-- and stops instead of sorting every match. A side whose statuses the filter
-- excludes is not read at all: the array test has no column in it, so it is a
-- one-time filter of the plan, generic plans included. Two queries (asc, desc)
-- rather than an ORDER BY on a parameter, for the same reason. Cost: filters
-- on definition, channel or tag have no index on the history (nor on the hot
-- table: decision 0033 measured what a GIN index on tags costs the claim and
-- the finish); its primary key is walked until the window is full, the whole
-- history when fewer jobs match. The tag test repeats `tags <> '{{}}'` so that
-- a partial index an operator adds (`USING gin (tags) WHERE tags <> '{{}}'`)
-- can serve it.
WITH hot AS (
    SELECT j.id, j.definition, j.channel,
           CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status,
           j.priority, j.payload, j.result,
           j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at, j.finalized_at,
           j.last_error, j.unique_key, j.resource_key, j.locked_by, j.tags, j.meta,
           j.progress, false AS in_history
    FROM {schema}.job j
    WHERE %(statuses)s::text[] && '{{waiting,scheduled,available,running}}'::text[]
      AND CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END
          = ANY(%(statuses)s::text[])
      AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
      AND (%(channel)s::text IS NULL OR j.channel = %(channel)s::text)
      AND (%(tag)s::text IS NULL OR (j.tags @> ARRAY[%(tag)s::text] AND j.tags <> '{{}}'))
    ORDER BY j.id
    LIMIT %(window)s
), finished AS (
    SELECT h.id, h.definition, h.channel, h.status::text, h.priority, h.payload, h.result,
           h.attempt, h.max_attempts, h.run_at, h.created_at, h.started_at, h.finalized_at,
           h.last_error, h.unique_key, h.resource_key, NULL::bigint, h.tags, h.meta,
           h.progress, true
    FROM {schema}.job_history h
    WHERE %(statuses)s::text[] && '{{succeeded,failed,cancelled}}'::text[]
      AND h.status::text = ANY(%(statuses)s::text[])
      AND (%(definition)s::text IS NULL OR h.definition = %(definition)s::text)
      AND (%(channel)s::text IS NULL OR h.channel = %(channel)s::text)
      AND (%(tag)s::text IS NULL OR (h.tags @> ARRAY[%(tag)s::text] AND h.tags <> '{{}}'))
    ORDER BY h.id
    LIMIT %(window)s
)
SELECT p.id, p.definition, p.channel, p.status::text AS status, p.priority, p.payload::text,
       p.result::text, p.attempt, p.max_attempts, p.run_at, p.created_at, p.started_at,
       p.finalized_at, p.last_error, p.unique_key, p.resource_key, p.locked_by,
       p.tags, p.meta::text, p.progress::text,
       ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
             WHERE d.job_id = p.id ORDER BY d.required_job_id) AS depends_on,
       NULL::jsonb AS attempts,
       p.in_history
FROM (SELECT * FROM hot UNION ALL SELECT * FROM finished) p
ORDER BY p.id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: manage_job_list_desc
-- manage_job_list_asc, newest first.
WITH hot AS (
    SELECT j.id, j.definition, j.channel,
           CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status,
           j.priority, j.payload, j.result,
           j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at, j.finalized_at,
           j.last_error, j.unique_key, j.resource_key, j.locked_by, j.tags, j.meta,
           j.progress, false AS in_history
    FROM {schema}.job j
    WHERE %(statuses)s::text[] && '{{waiting,scheduled,available,running}}'::text[]
      AND CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END
          = ANY(%(statuses)s::text[])
      AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
      AND (%(channel)s::text IS NULL OR j.channel = %(channel)s::text)
      AND (%(tag)s::text IS NULL OR (j.tags @> ARRAY[%(tag)s::text] AND j.tags <> '{{}}'))
    ORDER BY j.id DESC
    LIMIT %(window)s
), finished AS (
    SELECT h.id, h.definition, h.channel, h.status::text, h.priority, h.payload, h.result,
           h.attempt, h.max_attempts, h.run_at, h.created_at, h.started_at, h.finalized_at,
           h.last_error, h.unique_key, h.resource_key, NULL::bigint, h.tags, h.meta,
           h.progress, true
    FROM {schema}.job_history h
    WHERE %(statuses)s::text[] && '{{succeeded,failed,cancelled}}'::text[]
      AND h.status::text = ANY(%(statuses)s::text[])
      AND (%(definition)s::text IS NULL OR h.definition = %(definition)s::text)
      AND (%(channel)s::text IS NULL OR h.channel = %(channel)s::text)
      AND (%(tag)s::text IS NULL OR (h.tags @> ARRAY[%(tag)s::text] AND h.tags <> '{{}}'))
    ORDER BY h.id DESC
    LIMIT %(window)s
)
SELECT p.id, p.definition, p.channel, p.status::text AS status, p.priority, p.payload::text,
       p.result::text, p.attempt, p.max_attempts, p.run_at, p.created_at, p.started_at,
       p.finalized_at, p.last_error, p.unique_key, p.resource_key, p.locked_by,
       p.tags, p.meta::text, p.progress::text,
       ARRAY(SELECT d.required_job_id FROM {schema}.job_dependency d
             WHERE d.job_id = p.id ORDER BY d.required_job_id) AS depends_on,
       NULL::jsonb AS attempts,
       p.in_history
FROM (SELECT * FROM hot UNION ALL SELECT * FROM finished) p
ORDER BY p.id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: manage_job_count
-- How many jobs match the filters of manage_job_list_asc (for "page n of m"),
-- with the same one-time filters per side. Cost: counting finished jobs scans
-- the history (every partition the retention keeps).
SELECT (SELECT count(*) FROM {schema}.job j
        WHERE %(statuses)s::text[] && '{{waiting,scheduled,available,running}}'::text[]
          AND CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END
              = ANY(%(statuses)s::text[])
          AND (%(definition)s::text IS NULL OR j.definition = %(definition)s::text)
          AND (%(channel)s::text IS NULL OR j.channel = %(channel)s::text)
          AND (%(tag)s::text IS NULL OR (j.tags @> ARRAY[%(tag)s::text] AND j.tags <> '{{}}')))
       + (SELECT count(*) FROM {schema}.job_history h
          WHERE %(statuses)s::text[] && '{{succeeded,failed,cancelled}}'::text[]
            AND h.status::text = ANY(%(statuses)s::text[])
            AND (%(definition)s::text IS NULL OR h.definition = %(definition)s::text)
            AND (%(channel)s::text IS NULL OR h.channel = %(channel)s::text)
            AND (%(tag)s::text IS NULL OR (h.tags @> ARRAY[%(tag)s::text] AND h.tags <> '{{}}'))) AS n;

-- name: manage_job_retry
-- Retry one job. A finished job (succeeded, failed, cancelled) moves from the
-- history back into the hot table with its id: a fresh attempt budget
-- (`attempt` keeps counting, `max_attempts` becomes `attempt` plus the
-- definition's num_attempts, decision 0036), no result, available now, or waiting when one of its
-- dependencies has not succeeded (is unfinished, failed, cancelled, or no
-- longer kept). Its attempt log goes back into job_attempt rows, its success
-- included, so that the log reads on as before. An available job that waits
-- for its backoff is made due now. Running and waiting jobs are refused.
-- `limited` is recomputed, as job_insert computes it: the definition's limits
-- may have changed since the job was last unfinished, and a stale flag would
-- send the job down the wrong claim path.
--
-- Races. The row is locked in whichever table holds it, so a claim, finish
-- or other change in flight is waited for and the status read is the latest
-- committed one. A dependency that succeeds while this statement runs is not
-- seen by it (its history row commits after our snapshot) and its finish does
-- not see the job waiting yet: Python runs manage_job_recheck_waiting after
-- the commit when the job came back waiting (decision 0007), as defer does. A
-- unique_key now held by another unfinished job of the definition is detected
-- (`holder`) and nothing is written; two retries racing for one key are
-- stopped by job_unique_key_uniq, which the caller reports the same way. The
-- definition's row must exist (the hot table's foreign key): the history
-- outlives a definition that no daemon carries any more; such a job is
-- refused (`definition_missing`).
WITH hot AS MATERIALIZED (
    SELECT id, status, definition, unique_key FROM {schema}.job
    WHERE id = %(id)s
    FOR NO KEY UPDATE
), finished AS MATERIALIZED (
    SELECT id, status, definition, unique_key FROM {schema}.job_history
    WHERE id = %(id)s
    FOR UPDATE
), target AS (
    SELECT * FROM hot UNION ALL SELECT * FROM finished
), holder AS MATERIALIZED (
    SELECT o.id FROM {schema}.job o, target t
    WHERE o.definition = t.definition AND o.unique_key = t.unique_key AND o.id <> t.id
    ORDER BY o.id
    LIMIT 1
), defined AS MATERIALIZED (
    SELECT d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL AS limited,
           d.num_attempts
    FROM {schema}.job_definition d, target t
    WHERE d.name = t.definition
), made_due AS (
    UPDATE {schema}.job j
    SET run_at = least(j.run_at, now()),
        limited = j.resource_key IS NOT NULL OR coalesce((SELECT limited FROM defined), j.limited)
    FROM hot t
    WHERE j.id = t.id AND t.status = 'available' AND j.status = 'available'
      AND NOT EXISTS (SELECT 1 FROM holder)
    RETURNING j.id, j.status, j.channel
), moved AS (
    DELETE FROM {schema}.job_history h
    USING finished f
    WHERE h.id = f.id
      AND NOT EXISTS (SELECT 1 FROM holder) AND EXISTS (SELECT 1 FROM defined)
    RETURNING h.*
), restored AS (
    INSERT INTO {schema}.job (
        id, definition, channel, status, priority, payload, attempt, max_attempts, run_at,
        unique_key, resource_key, tick_at, limited, created_at, started_at, last_error,
        trace_context, created_by, tags, meta, progress)
    OVERRIDING SYSTEM VALUE
    SELECT m.id, m.definition, m.channel,
           CASE WHEN EXISTS (
                    SELECT 1 FROM {schema}.job_dependency d
                    WHERE d.job_id = m.id
                      AND NOT EXISTS (SELECT 1 FROM {schema}.job_history r
                                      WHERE r.id = d.required_job_id AND r.status = 'succeeded'))
                THEN 'waiting' ELSE 'available' END::{schema}.job_status,
           m.priority, m.payload, m.attempt, m.attempt + (SELECT num_attempts FROM defined),
           now(), m.unique_key, m.resource_key,
           m.tick_at, m.resource_key IS NOT NULL OR coalesce((SELECT limited FROM defined), false),
           m.created_at, m.started_at, m.last_error, m.trace_context, m.created_by,
           m.tags, m.meta, m.progress
    FROM moved m
    RETURNING id, status, channel
), log_restored AS (
    INSERT INTO {schema}.job_attempt (
        job_id, attempt, worker_id, worker_name, started_at, finished_at, outcome, error,
        traceback, lock_token)
    SELECT m.id, (e.entry ->> 'attempt')::integer, (e.entry ->> 'worker_id')::bigint,
           e.entry ->> 'worker_name',
           coalesce((e.entry ->> 'started_at')::timestamptz,
                    (e.entry ->> 'finished_at')::timestamptz, m.finalized_at),
           coalesce((e.entry ->> 'finished_at')::timestamptz, m.finalized_at),
           e.entry ->> 'outcome', e.entry ->> 'error', e.entry ->> 'traceback',
           (e.entry ->> 'lock_token')::uuid
    FROM moved m,
         jsonb_array_elements(m.attempts
             || CASE WHEN m.status = 'succeeded' THEN jsonb_build_array(jsonb_build_object(
                         'attempt', m.attempt, 'worker_id', m.worker_id,
                         'worker_name', m.worker_name,
                         'started_at', coalesce(m.started_at, m.finalized_at),
                         'finished_at', m.finalized_at, 'outcome', 'succeeded',
                         'error', NULL, 'traceback', NULL, 'lock_token', m.lock_token))
                     ELSE '[]'::jsonb END) WITH ORDINALITY AS e(entry, n)
    ORDER BY m.id, e.n
), retried AS (
    SELECT * FROM made_due UNION ALL SELECT * FROM restored
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM retried WHERE status = 'available') c
)
SELECT (SELECT status::text FROM target) AS status,
       EXISTS (SELECT 1 FROM retried) AS done,
       (SELECT status::text FROM retried) AS new_status,
       (SELECT id FROM holder) AS holder_id,
       (SELECT unique_key FROM target) AS unique_key,
       (SELECT definition FROM target) AS definition,
       EXISTS (SELECT 1 FROM finished) AND NOT EXISTS (SELECT 1 FROM defined)
           AS definition_missing,
       (SELECT n FROM woken) AS woken;

-- name: manage_job_recheck_waiting
-- After a retry that left jobs waiting has committed: release those whose
-- dependencies have all succeeded meanwhile, and wake their channels. The
-- function locks each job's dependencies FOR SHARE (waiting for a finish in
-- flight) and then reads them in a new snapshot (decision 0007).
SELECT count(*) FILTER (WHERE {schema}.job_recheck_waiting(w.id, %(notify_channel)s) > 0)
       AS released
FROM unnest(%(ids)s::bigint[]) AS w(id);

-- name: manage_job_retry_failed
-- Retry one batch of failed jobs, each with a fresh attempt budget (as in
-- manage_job_retry: attempt numbers go on), of one
-- definition or all, in id order after %(after_id)s: the caller pages on
-- `last_id`, so each failed job is visited once even if it fails again
-- meanwhile, and locks are held for one bounded batch only. Failed jobs are
-- all in the history; rows locked by someone else are skipped (SKIP LOCKED):
-- they are being changed. Same effect per job as manage_job_retry (moved back
-- into the hot table with their attempt log); `waiting` lists those that came
-- back waiting, for manage_job_recheck_waiting. Since a dependency has a
-- smaller id than its dependents, failed dependencies are retried first (or
-- in the same batch, where the snapshot still shows them failed), and their
-- dependents wait for them. Jobs whose definition row is gone stay failed.
--
-- Unique keys: a failed job whose key is held by an unfinished job, or by a
-- newer failed job (which is retried instead), stays failed, so that the batch
-- never trips job_unique_key_uniq by itself. Should a job taking one of the
-- keys commit after this statement's snapshot, the index refuses the batch
-- and the caller runs it again (its new snapshot sees that job).
--
-- Cost: the history has no index on status; each batch walks its primary key
-- from %(after_id)s until it has found %(limit)s failed jobs, so a whole run
-- reads the history once. The newer-failed-job check of a keyed job walks the
-- history's primary key above that job.
WITH batch AS MATERIALIZED (
    SELECT h.id, h.definition, h.unique_key FROM {schema}.job_history h
    WHERE h.status = 'failed' AND h.id > %(after_id)s
      AND (%(definition)s::text IS NULL OR h.definition = %(definition)s::text)
    ORDER BY h.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), eligible AS MATERIALIZED (
    SELECT b.id FROM batch b
    WHERE EXISTS (SELECT 1 FROM {schema}.job_definition d WHERE d.name = b.definition)
      AND (b.unique_key IS NULL OR (
          NOT EXISTS (
              SELECT 1 FROM {schema}.job o
              WHERE o.definition = b.definition AND o.unique_key = b.unique_key)
          AND NOT EXISTS (
              SELECT 1 FROM {schema}.job_history o
              WHERE o.id > b.id AND o.status = 'failed'
                AND o.definition = b.definition AND o.unique_key = b.unique_key)))
), moved AS (
    DELETE FROM {schema}.job_history h
    USING eligible e
    WHERE h.id = e.id AND h.status = 'failed'
    RETURNING h.*
), restored AS (
    INSERT INTO {schema}.job (
        id, definition, channel, status, priority, payload, attempt, max_attempts, run_at,
        unique_key, resource_key, tick_at, limited, created_at, started_at, last_error,
        trace_context, created_by, tags, meta, progress)
    OVERRIDING SYSTEM VALUE
    SELECT m.id, m.definition, m.channel,
           CASE WHEN EXISTS (
                    SELECT 1 FROM {schema}.job_dependency d
                    WHERE d.job_id = m.id
                      AND NOT EXISTS (SELECT 1 FROM {schema}.job_history r
                                      WHERE r.id = d.required_job_id AND r.status = 'succeeded'))
                THEN 'waiting' ELSE 'available' END::{schema}.job_status,
           m.priority, m.payload, m.attempt,
           m.attempt + (SELECT d.num_attempts FROM {schema}.job_definition d
                        WHERE d.name = m.definition),
           now(), m.unique_key, m.resource_key, m.tick_at,
           m.resource_key IS NOT NULL
           OR coalesce((SELECT d.release_interval_ms > 0 OR d.max_concurrency IS NOT NULL
                        FROM {schema}.job_definition d WHERE d.name = m.definition), false),
           m.created_at, m.started_at, m.last_error, m.trace_context, m.created_by,
           m.tags, m.meta, m.progress
    FROM moved m
    ORDER BY m.id
    RETURNING id, status, channel
), log_restored AS (
    -- A failed job has no success entry to add (see manage_job_retry).
    INSERT INTO {schema}.job_attempt (
        job_id, attempt, worker_id, worker_name, started_at, finished_at, outcome, error,
        traceback, lock_token)
    SELECT m.id, (e.entry ->> 'attempt')::integer, (e.entry ->> 'worker_id')::bigint,
           e.entry ->> 'worker_name',
           coalesce((e.entry ->> 'started_at')::timestamptz,
                    (e.entry ->> 'finished_at')::timestamptz, m.finalized_at),
           coalesce((e.entry ->> 'finished_at')::timestamptz, m.finalized_at),
           e.entry ->> 'outcome', e.entry ->> 'error', e.entry ->> 'traceback',
           (e.entry ->> 'lock_token')::uuid
    FROM moved m, jsonb_array_elements(m.attempts) WITH ORDINALITY AS e(entry, n)
    ORDER BY m.id, e.n
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM (SELECT DISTINCT channel FROM restored WHERE status = 'available') c
)
SELECT (SELECT count(*) FROM batch) AS scanned,
       (SELECT max(id) FROM batch) AS last_id,
       (SELECT count(*) FROM restored) AS retried,
       ARRAY(SELECT id FROM restored WHERE status = 'waiting' ORDER BY id) AS waiting,
       (SELECT n FROM woken) AS woken;

-- name: manage_job_cancel
-- Cancel one unfinished job (waiting, available or running): it moves to the
-- history as cancelled, with its attempt-log rows, and result waiters are told
-- at once. A running attempt is logged here as cancelled, so that every
-- attempt keeps its entry; without its lock token, so that job_finish_recorded
-- never takes a refused finish for a recorded one (not even after a retry
-- moved the log back). Its worker is told on the workers' channel, with the
-- payload `cancel <worker id> <job id> <lock token>` (a space is never part
-- of a job channel's name, so no worker takes it for a wake-up, and a worker
-- tells one for another worker by its prefix): it stops the attempt and
-- writes nothing more (orchestra/_worker/_listener.py). A worker that does
-- not listen finds the job at its next heartbeat (worker_heartbeat); a finish
-- it wrote before it knew is fenced by (id, attempt, lock_token) in
-- job_finish_many, finds no row, and is refused. The DELETE locks the row: a
-- claim or finish in flight is waited for, and a job that finished meanwhile
-- is not deleted (the caller runs the statement again to read its status).
-- Dependents are failed by the orchestrator's finalizer (unmet_dependencies),
-- as for any cancelled dependency. A running job no longer holds its resource
-- key nor a max_concurrency slot once cancelled, so its channel's workers are
-- woken to take the next job.
WITH ended AS (
    DELETE FROM {schema}.job j
    WHERE j.id = %(id)s
    RETURNING j.*
), earlier AS (
    DELETE FROM {schema}.job_attempt a USING ended e WHERE a.job_id = e.id
    RETURNING a.*
), historied AS (
    INSERT INTO {schema}.job_history (
        id, definition, channel, status, priority, payload, result, attempt, max_attempts,
        run_at, unique_key, resource_key, tick_at, created_at, started_at, finalized_at,
        last_error, attempts, trace_context, created_by, tags, meta, progress)
    SELECT e.id, e.definition, e.channel, 'cancelled', e.priority, e.payload, NULL, e.attempt,
           e.max_attempts, e.run_at, e.unique_key, e.resource_key, e.tick_at, e.created_at,
           e.started_at, clock_timestamp(), coalesce(e.last_error, 'cancelled'),
           coalesce((SELECT jsonb_agg(to_jsonb(a) - 'job_id' ORDER BY a.id)
                     FROM earlier a WHERE a.job_id = e.id), '[]'::jsonb)
           || CASE WHEN e.status = 'running' THEN jsonb_build_array(jsonb_build_object(
                  'attempt', e.attempt, 'worker_id', e.locked_by,
                  'worker_name', (SELECT w.name FROM {schema}.worker w WHERE w.id = e.locked_by),
                  'started_at', coalesce(e.started_at, clock_timestamp()),
                  'finished_at', clock_timestamp(), 'outcome', 'cancelled',
                  'error',
                  'cancelled: the job was cancelled while this attempt ran; its worker stops it',
                  'traceback', NULL, 'lock_token', NULL))
                   ELSE '[]'::jsonb END,
           e.trace_context, e.created_by, e.tags, e.meta, e.progress
    FROM ended e
    RETURNING id
), notified AS (
    SELECT count(pg_notify(%(finished_channel)s, id::text)) AS n FROM historied
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, e.channel)) AS n
    FROM ended e
    WHERE e.status = 'running'
), stopped AS (
    SELECT count(pg_notify(%(notify_channel)s,
                           'cancel ' || e.locked_by || ' ' || e.id || ' ' || e.lock_token)) AS n
    FROM ended e
    WHERE e.status = 'running' AND e.locked_by IS NOT NULL
)
SELECT coalesce((SELECT status::text FROM ended),
                (SELECT status::text FROM {schema}.job_history WHERE id = %(id)s)) AS status,
       EXISTS (SELECT 1 FROM historied) AS done,
       (SELECT n FROM notified) AS notified,
       (SELECT n FROM woken) AS woken,
       (SELECT n FROM stopped) AS stopped;

-- name: manage_job_delete
-- Delete one job, from whichever table holds it, unless it is running or an
-- unfinished job depends on it; its attempt-log rows and its dependency edges
-- (both ways: those of finished dependents too) go with it. The row is
-- locked first (FOR UPDATE, as the DELETE would), so the status read cannot
-- change before the DELETE; the DELETE re-checks it all the same. A dependent
-- deferred by a transaction still open is not seen (no foreign key locks the
-- dependency any more): if it commits after the delete it finds its
-- dependency in neither table, which counts as unmet for good, so it never
-- runs without it (a dependent that saw the dependency succeeded runs).
WITH hot AS MATERIALIZED (
    SELECT id, status FROM {schema}.job WHERE id = %(id)s FOR UPDATE
), finished AS MATERIALIZED (
    SELECT id, status FROM {schema}.job_history WHERE id = %(id)s FOR UPDATE
), target AS (
    SELECT * FROM hot UNION ALL SELECT * FROM finished
), blocker AS MATERIALIZED (
    SELECT d.job_id FROM {schema}.job_dependency d
    JOIN {schema}.job w ON w.id = d.job_id
    WHERE d.required_job_id = %(id)s
    ORDER BY d.job_id
    LIMIT 1
), deleted_hot AS (
    DELETE FROM {schema}.job j USING hot t
    WHERE j.id = t.id AND j.status <> 'running' AND NOT EXISTS (SELECT 1 FROM blocker)
    RETURNING j.id
), deleted_finished AS (
    DELETE FROM {schema}.job_history h USING finished f
    WHERE h.id = f.id AND NOT EXISTS (SELECT 1 FROM blocker)
    RETURNING h.id
), deleted AS (
    SELECT id FROM deleted_hot UNION ALL SELECT id FROM deleted_finished
), log_deleted AS (
    DELETE FROM {schema}.job_attempt a WHERE a.job_id IN (SELECT id FROM deleted_hot)
), edges_deleted AS (
    DELETE FROM {schema}.job_dependency e
    WHERE e.job_id IN (SELECT id FROM deleted) OR e.required_job_id IN (SELECT id FROM deleted)
)
SELECT (SELECT status::text FROM target) AS status,
       EXISTS (SELECT 1 FROM deleted) AS done,
       (SELECT job_id FROM blocker) AS blocker_id;

-- name: manage_job_delete_failed
-- Delete one batch of failed jobs (all in the history) of one definition or
-- all, in id order after %(after_id)s; the caller pages on `last_id`. Rows
-- locked by someone else are skipped. A failed job that an unfinished job
-- depends on stays; a finished dependent does not hold its dependency back.
-- Their dependency edges go with them. Cost: as manage_job_retry_failed's
-- batch, a walk of the history's primary key.
WITH batch AS MATERIALIZED (
    SELECT h.id FROM {schema}.job_history h
    WHERE h.status = 'failed' AND h.id > %(after_id)s
      AND (%(definition)s::text IS NULL OR h.definition = %(definition)s::text)
    ORDER BY h.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM {schema}.job_history h
    USING batch b
    WHERE h.id = b.id AND h.status = 'failed'
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job_dependency d
          JOIN {schema}.job w ON w.id = d.job_id
          WHERE d.required_job_id = h.id)
    RETURNING h.id
), edges_deleted AS (
    DELETE FROM {schema}.job_dependency e
    WHERE e.job_id IN (SELECT id FROM deleted) OR e.required_job_id IN (SELECT id FROM deleted)
)
SELECT (SELECT count(*) FROM batch) AS scanned,
       (SELECT max(id) FROM batch) AS last_id,
       (SELECT count(*) FROM deleted) AS deleted;

-- name: manage_definition_list
-- Every definition row with its settings, its daemons' timestamps, and how
-- many of its jobs are in each status, finished ones included for as long as
-- the history keeps them. One grouped pass over each table (a status is in one
-- table only, so no pair is counted twice). Cost: the pass over the history
-- scans every partition the retention keeps (no index on definition there).
WITH counted AS MATERIALIZED (
    SELECT j.definition, s.status, count(*) AS n
    FROM {schema}.job j,
         LATERAL (SELECT CASE WHEN j.status = 'available' AND j.run_at > now() THEN 'scheduled' ELSE j.status::text END AS status) s
    GROUP BY j.definition, s.status
    UNION ALL
    SELECT h.definition, h.status::text, count(*)
    FROM {schema}.job_history h
    GROUP BY h.definition, h.status
)
SELECT d.name, d.channel, d.num_attempts, d.backoff, d.priority, d.repeat_interval_ms, d.cron,
       d.release_interval_ms, d.max_concurrency, d.lock_interval_ms, d.timeout_interval_ms,
       d.last_repeated_at, d.next_tick_at, d.last_released_at, d.last_heartbeat_at, d.paused,
       coalesce((SELECT jsonb_object_agg(c.status, c.n)
                 FROM counted c WHERE c.definition = d.name),
                '{{}}'::jsonb) AS counts
FROM {schema}.job_definition d
ORDER BY d.name;

-- == Pausing channels and definitions (docs/decisions/0031) ==================
--
-- A pause is read by every claim (job_claim, job_claim_limited): the next
-- claim of every worker leaves the paused work alone, and running jobs
-- finish as usual. Pausing and resuming are idempotent: each statement says
-- whether it changed anything. A resume wakes the workers of the channel.

-- name: manage_channel_pause
-- A channel needs no other row to exist: one that has no job yet can be
-- paused too (the name is checked in Python).
INSERT INTO {schema}.channel_pause (channel) VALUES (%(channel)s)
ON CONFLICT (channel) DO NOTHING
RETURNING channel;

-- name: manage_channel_resume
WITH resumed AS (
    DELETE FROM {schema}.channel_pause WHERE channel = %(channel)s
    RETURNING channel
)
SELECT channel, pg_notify(%(notify_channel)s, channel) AS woken FROM resumed;

-- name: manage_channel_paused
SELECT channel, paused_at, paused_by FROM {schema}.channel_pause ORDER BY channel;

-- name: manage_definition_pause
-- Set a stored definition's `paused` to %(paused)s. Returns its row as found
-- (no row: no such definition is stored) and whether it changed; a resume
-- wakes the definition's channel. The daemons' definition_upsert leaves
-- `paused` alone, so a pause outlasts their restarts.
WITH found AS MATERIALIZED (
    SELECT name, channel, paused FROM {schema}.job_definition
    WHERE name = %(name)s
    FOR NO KEY UPDATE
), changed AS (
    UPDATE {schema}.job_definition d SET paused = %(paused)s
    FROM found f
    WHERE d.name = f.name AND f.paused <> %(paused)s
    RETURNING d.name, d.channel
), woken AS (
    SELECT count(pg_notify(%(notify_channel)s, channel)) AS n
    FROM changed WHERE NOT %(paused)s
)
SELECT f.name, f.channel, EXISTS (SELECT 1 FROM changed) AS changed, (SELECT n FROM woken) AS woken
FROM found f;

-- name: manage_definition_paused
SELECT name, channel FROM {schema}.job_definition WHERE paused ORDER BY name;
