-- Queries on the worker table (live daemons) and the worker's lease upkeep.

-- name: worker_register
INSERT INTO {schema}.worker (name, role, host, pid, channel, concurrency)
VALUES (%(name)s, %(role)s, %(host)s, %(pid)s, %(channel)s, %(concurrency)s)
RETURNING id;

-- name: worker_delete
DELETE FROM {schema}.worker WHERE id = %(worker_id)s;

-- name: worker_heartbeat
-- Record that the worker is alive and extend the lease of the jobs it is
-- still running, in one statement. The lock token fences the extension: a job
-- that was rescued meanwhile is not taken back. Returns one row: whether the
-- worker row still exists, and how many leases were extended.
WITH alive AS (
    UPDATE {schema}.worker SET heartbeat_at = clock_timestamp()
    WHERE id = %(worker_id)s
    RETURNING id
), extended AS (
    UPDATE {schema}.job j
    SET locked_until = clock_timestamp() + d.lock_interval_ms * interval '1 millisecond'
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS held(id, token),
         {schema}.job_definition d
    WHERE j.id = held.id AND j.lock_token = held.token AND j.status = 'running'
      AND d.name = j.definition
    RETURNING j.id
)
SELECT (SELECT count(*) FROM alive) > 0 AS alive, (SELECT count(*) FROM extended) AS extended;

-- name: worker_touch
-- Refresh a daemon's heartbeat; no row back means its row was removed.
UPDATE {schema}.worker SET heartbeat_at = clock_timestamp() WHERE id = %(worker_id)s RETURNING id;

-- name: transaction_begin
-- A lane's transaction, opened and committed as statements of its pipeline:
-- the whole lane write is one round trip (decision 0015).
BEGIN;

-- name: transaction_commit
COMMIT;
