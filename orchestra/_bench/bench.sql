-- Queries of `orchestra bench`, loaded by the bench alone (never by a Config).
-- They run on throwaway schemas dropped at the end.
--
-- Three groups: the lean floor (a queue table of the bench's own, the least
-- a SKIP LOCKED queue can do), the few queries that read or load orchestra's
-- tables (kept apart so a change of orchestra's table layout touches only
-- them), and the few that read PgQueuer's tables (rendered for the schema
-- PgQueuer is installed in).

-- == The lean floor ==========================================================

-- name: bench_lean_create_table
-- The plainest queue table: no definition, channel, priority, attempts or
-- lease; finished rows are deleted, not kept.
CREATE TABLE {schema}.lean_q (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_at timestamptz
);

-- name: bench_lean_create_index
-- Its one secondary index: the claim's scan of the queued rows.
CREATE INDEX ON {schema}.lean_q (id) WHERE status = 'queued';

-- name: bench_lean_insert
-- Floor of a single defer: one INSERT, committed on its own (autocommit).
INSERT INTO {schema}.lean_q (payload) VALUES (%(payload)s);

-- name: bench_lean_insert_notify
-- Floor of the latency run: INSERT and a bare NOTIFY in one statement.
WITH inserted AS (
    INSERT INTO {schema}.lean_q (payload) VALUES (%(payload)s)
    RETURNING id
)
SELECT pg_notify(%(notify_channel)s, '') FROM inserted;

-- name: bench_lean_copy
-- Floor of defer_many, and how the floor's processing run is loaded.
COPY {schema}.lean_q (payload) FROM STDIN;

-- name: bench_lean_claim
-- Claim up to 100 queued jobs, skipping the rows another claimer holds ...
UPDATE {schema}.lean_q SET status = 'running', claimed_at = now()
WHERE id IN (
    SELECT id FROM {schema}.lean_q
    WHERE status = 'queued'
    ORDER BY id
    LIMIT 100
    FOR UPDATE SKIP LOCKED
)
RETURNING id, payload;

-- name: bench_lean_delete
-- ... and, once they ran, delete them: nothing of a finished job is kept.
DELETE FROM {schema}.lean_q WHERE id = ANY(%(ids)s);

-- name: bench_lean_analyze
-- After loading a processing run, as bench_analyze does for orchestra's table.
VACUUM (ANALYZE) {schema}.lean_q;

-- name: bench_lean_reset
TRUNCATE {schema}.lean_q;

-- == orchestra's tables ======================================================

-- name: bench_copy_jobs
-- How orchestra's processing runs are loaded.
COPY {schema}.job (definition, channel, payload, max_attempts) FROM STDIN;

-- name: bench_history_prepare
-- The history partitions of the finished jobs about to be loaded, as the
-- orchestrator's sweeper makes them ahead of the ids.
SELECT {schema}.job_history_prepare(0, %(count)s + 2000000, 1000000);

-- name: bench_insert_finalized
-- Finished jobs not yet past their retention: how the history looks when work
-- grows. Ids from the job sequence, as finishing jobs would have them.
INSERT INTO {schema}.job_history (id, definition, channel, status, priority, payload, attempt,
                                  max_attempts, run_at, created_at, started_at, finalized_at)
SELECT nextval(pg_get_serial_sequence('{schema}.job', 'id')), %(definition)s, %(channel)s,
       'succeeded', 0, '{{}}', 1, 1, now(), now(), now(), now()
FROM generate_series(1, %(count)s);

-- name: bench_analyze
-- After a bulk load (the jobs of a processing run, finalized rows): vacuumed
-- and analyzed, as autovacuum leaves a table in steady state. Without it the
-- planner plans for the empty table it saw last (PgQueuer's claim then sorts
-- the whole queue: 1,000 jobs/s over 200,000), or the insert-triggered
-- autovacuum of a million fresh rows runs during the measurement and is what
-- it measures. Every queue's table gets the same, outside the timing.
VACUUM (ANALYZE) {schema}.job;

-- name: bench_analyze_history
VACUUM (ANALYZE) {schema}.job_history;

-- name: bench_count_unfinished
-- After a processing run, besides the workers' own counts: no job of the
-- definition is left unfinished (finished jobs are not counted here, so this
-- holds whether the table keeps them or not).
SELECT count(*) FROM {schema}.job WHERE definition = %(definition)s AND status <> 'succeeded';

-- name: bench_worker_ready
-- The bench's worker processes have registered (and so have started).
SELECT count(*) FROM {schema}.worker WHERE role = 'worker';

-- name: bench_reset
-- Between runs: no job left, so each run starts on an empty queue and history.
TRUNCATE {schema}.job, {schema}.job_history, {schema}.job_attempt, {schema}.job_dependency;

-- == PgQueuer's tables =======================================================

-- name: bench_pgqueuer_done
-- After a PgQueuer processing run: jobs logged as successful, jobs left queued.
SELECT
    (SELECT count(*) FROM {schema}.pgqueuer_log
     WHERE status = 'successful' AND entrypoint = %(entrypoint)s),
    (SELECT count(*) FROM {schema}.pgqueuer);

-- name: bench_pgqueuer_analyze
-- After loading a processing run, as bench_analyze does for orchestra's table.
VACUUM (ANALYZE) {schema}.pgqueuer;

-- name: bench_pgqueuer_reset
-- Between runs: PgQueuer's queue and logs emptied, as bench_reset does for orchestra.
TRUNCATE {schema}.pgqueuer, {schema}.pgqueuer_log, {schema}.pgqueuer_statistics;
