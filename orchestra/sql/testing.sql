-- Queries of orchestra.testing, the helpers for the tests of applications.

-- name: job_count_unfinished
-- Jobs of a channel that are due now and not finalized (waiting ones included).
SELECT count(*) FROM {schema}.job
WHERE channel = %(channel)s AND run_at <= now();
