-- Queries of `orchestra health` (probes).

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
