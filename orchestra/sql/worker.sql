-- Queries on the worker table (live daemons) and the worker's lease upkeep.

-- name: worker_register
-- %(secret)s is the daemon's own, kept in its memory: the row stores its
-- SHA-256, and worker_touch / worker_deregister want the secret.
INSERT INTO {schema}.worker (name, role, host, pid, channel, concurrency, secret_hash)
VALUES (%(name)s, %(role)s, %(host)s, %(pid)s, %(channel)s, %(concurrency)s,
        sha256(convert_to(%(secret)s, 'UTF8')))
RETURNING id;

-- name: worker_delete
SELECT {schema}.worker_deregister(%(worker_id)s, %(secret)s);

-- name: worker_heartbeat
-- Record that the worker is alive and extend the lease of the jobs it is
-- still running, in one statement. The lock token fences the extension: a job
-- that was rescued meanwhile is not taken back. Returns one row: whether the
-- worker row still exists, and how many leases were extended.
WITH alive AS MATERIALIZED (
    SELECT {schema}.worker_touch(%(worker_id)s, %(secret)s) AS alive
), extended AS (
    UPDATE {schema}.job j
    SET locked_until = clock_timestamp() + d.lock_interval_ms * interval '1 millisecond'
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS held(id, token),
         {schema}.job_definition d
    WHERE j.id = held.id AND j.lock_token = held.token AND j.status = 'running'
      AND d.name = j.definition
    RETURNING j.id
)
SELECT (SELECT alive FROM alive) AS alive, (SELECT count(*) FROM extended) AS extended;

-- name: worker_touch
-- Refresh a daemon's heartbeat; false means its row was removed (reaped).
SELECT {schema}.worker_touch(%(worker_id)s, %(secret)s);

-- name: transaction_begin
-- A lane's transaction, opened and committed as statements of its pipeline:
-- the whole lane write is one round trip (decision 0015).
BEGIN;

-- name: transaction_commit
COMMIT;
