-- Queries on job_definition.

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

-- name: definition_get
SELECT * FROM {schema}.job_definition WHERE name = %(name)s;

-- name: definition_ensure
-- What defer writes (JobDefinition._ensure, and again when an insert finds
-- the definition missing): the row when it is missing, otherwise a fresh
-- heartbeat only. The settings of an existing definition belong to the
-- daemons that carry its code (definition_upsert at their start), so that a
-- producer, which may hold an older or a different copy of them, never
-- changes a lease or a limit under running jobs. A SECURITY DEFINER function
-- (schemas/0006_least_privilege.sql): producer roles need no write privilege
-- on job_definition.
SELECT {schema}.definition_ensure(
    %(name)s::text, %(channel)s::text, %(num_attempts)s::integer, %(backoff)s::text,
    %(backoff_base_ms)s::bigint, %(backoff_max_ms)s::bigint, %(priority)s::smallint,
    %(repeat_interval_ms)s::bigint, %(cron)s::text, %(release_interval_ms)s::bigint,
    %(max_concurrency)s::integer, %(lock_interval_ms)s::bigint, %(timeout_interval_ms)s::bigint);
