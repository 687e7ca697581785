-- What every daemon, worker or orchestrator, runs about itself: its row in the
-- worker table (registration, heartbeat, removal) and the job definitions it
-- carries (their settings when it starts, their heartbeat while it runs).

-- name: worker_register
-- %(secret)s is the daemon's own, kept in its memory: the row stores its
-- SHA-256, and worker_touch / worker_deregister want the secret.
-- %(channels)s: the channels a worker serves (NULL for an orchestrator);
-- `channel` keeps the first of them for readers of schema version 7.
INSERT INTO {schema}.worker (name, role, host, pid, channel, channels, concurrency, secret_hash)
VALUES (%(name)s, %(role)s, %(host)s, %(pid)s, (%(channels)s::text[])[1], %(channels)s::text[],
        %(concurrency)s, sha256(convert_to(%(secret)s, 'UTF8')))
RETURNING id;

-- name: worker_touch
-- Refresh a daemon's heartbeat; false means its row was removed (reaped).
SELECT {schema}.worker_touch(%(worker_id)s, %(secret)s);

-- name: worker_delete
SELECT {schema}.worker_deregister(%(worker_id)s, %(secret)s);

-- name: definition_upsert
-- Store a definition's settings; the last writer wins. Values are clamped
-- (attempts at least 1, intervals at least 0) even though JobDefinition
-- already rejects them, so that rows written by any client stay within the
-- CHECK constraints.
-- last_repeated_at and last_released_at belong to the daemons and are kept.
WITH upserted AS (
INSERT INTO {schema}.job_definition AS d (
    name, channel, num_attempts, backoff, backoff_base_ms, backoff_max_ms, priority,
    repeat_interval_ms, cron, release_interval_ms, max_concurrency,
    lock_interval_ms, timeout_interval_ms
) VALUES (
    %(name)s, %(channel)s, greatest(%(num_attempts)s, 1), %(backoff)s,
    greatest(%(backoff_base_ms)s, 0), greatest(%(backoff_max_ms)s, 0), %(priority)s,
    -- greatest() ignores NULL: an unset repeat interval must stay NULL.
    CASE WHEN %(repeat_interval_ms)s::bigint IS NULL THEN NULL
         ELSE greatest(%(repeat_interval_ms)s::bigint, 0) END,
    %(cron)s, greatest(%(release_interval_ms)s, 0),
    %(max_concurrency)s, greatest(%(lock_interval_ms)s, 0), greatest(%(timeout_interval_ms)s, 0)
)
ON CONFLICT (name) DO UPDATE SET
    channel = excluded.channel,
    num_attempts = excluded.num_attempts,
    backoff = excluded.backoff,
    backoff_base_ms = excluded.backoff_base_ms,
    backoff_max_ms = excluded.backoff_max_ms,
    priority = excluded.priority,
    repeat_interval_ms = excluded.repeat_interval_ms,
    cron = excluded.cron,
    release_interval_ms = excluded.release_interval_ms,
    max_concurrency = excluded.max_concurrency,
    lock_interval_ms = excluded.lock_interval_ms,
    timeout_interval_ms = excluded.timeout_interval_ms,
    last_heartbeat_at = now(),
    updated_at = now()
RETURNING name, num_attempts, release_interval_ms > 0 OR max_concurrency IS NOT NULL AS limited
), flagged AS (
    -- Unfinished jobs follow a change of the definition's limits; a job with
    -- a resource key stays limited whatever its definition says.
    UPDATE {schema}.job j SET limited = u.limited OR j.resource_key IS NOT NULL
    FROM upserted u
    WHERE j.definition = u.name AND j.finalized_at IS NULL
      AND j.limited <> (u.limited OR j.resource_key IS NOT NULL)
)
SELECT num_attempts FROM upserted;

-- name: definition_heartbeat_many
-- Record that a daemon still carries these definitions.
UPDATE {schema}.job_definition
SET last_heartbeat_at = coalesce(%(now)s::timestamptz, clock_timestamp())
WHERE name = ANY(%(names)s::text[])
RETURNING name;
