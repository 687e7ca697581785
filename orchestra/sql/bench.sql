-- Queries of `orchestra bench`: the raw-SQL baseline every figure is compared
-- with, and the bench's own bookkeeping. They run on a throwaway schema.

-- name: bench_insert_raw
-- Baseline of a single defer: one plain INSERT, committed on its own.
INSERT INTO {schema}.job (definition, channel, payload, max_attempts)
VALUES (%(definition)s, %(channel)s, %(payload)s, 1);

-- name: bench_insert_raw_notify
-- Baseline of the latency run: INSERT and a bare NOTIFY in one transaction.
WITH inserted AS (
    INSERT INTO {schema}.job (definition, channel, payload, max_attempts)
    VALUES (%(definition)s, %(channel)s, %(payload)s, 1)
    RETURNING id
)
SELECT pg_notify(%(notify_channel)s, '') FROM inserted;

-- name: bench_copy_jobs
-- Baseline of defer_many, and how the processing runs are loaded.
COPY {schema}.job (definition, channel, payload, max_attempts) FROM STDIN;

-- name: bench_copy_finalized
-- Finalized jobs not yet swept: how the hot table looks when work grows.
COPY {schema}.job (definition, channel, payload, max_attempts, status, attempt, finalized_at)
FROM STDIN;

-- name: bench_analyze
-- After the bulk load of finalized rows: vacuumed and analyzed, as autovacuum
-- leaves a table in steady state. Without it the insert-triggered autovacuum
-- of a million fresh rows runs during the measurement and is what it measures.
VACUUM (ANALYZE) {schema}.job;

-- name: bench_claim_raw
-- The practical ceiling: claim up to %(limit)s jobs with SKIP LOCKED ...
WITH claimable AS MATERIALIZED (
    SELECT id FROM {schema}.job
    WHERE status = 'available' AND channel = %(channel)s
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.job j
SET status = 'running', attempt = j.attempt + 1, lock_token = gen_random_uuid(),
    started_at = clock_timestamp()
FROM claimable c WHERE j.id = c.id
RETURNING j.id, j.payload;

-- name: bench_finish_raw
-- ... and finish them all in one UPDATE.
UPDATE {schema}.job
SET status = 'succeeded', finalized_at = clock_timestamp(), lock_token = NULL
WHERE id = ANY(%(ids)s::bigint[]);

-- name: bench_count_succeeded
SELECT count(*) FROM {schema}.job WHERE status = 'succeeded' AND definition = %(definition)s;

-- name: bench_results
SELECT result FROM {schema}.job WHERE definition = %(definition)s AND status = 'succeeded';

-- name: bench_worker_ready
-- The bench's worker processes have registered (and so have started).
SELECT count(*) FROM {schema}.worker WHERE role = 'worker';

-- name: bench_commits
-- Transactions committed in this database (each autocommit statement is one):
-- the idle run's query count, read before and after.
SELECT xact_commit FROM pg_stat_database WHERE datname = current_database();

-- name: bench_reset
-- Between runs: no job left, so each run starts on an empty hot table.
TRUNCATE {schema}.job CASCADE;
