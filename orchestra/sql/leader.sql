-- The orchestrator leader lease: one row per lease name, expiry on the database clock.

-- name: leader_attempt_elect
-- Take the lease if it is free or expired, or renew it if we hold it. A row
-- comes back only when we hold the lease afterwards.
INSERT INTO {schema}.leader AS l (name, holder, elected_at, expires_at)
VALUES (%(name)s, %(holder)s, clock_timestamp(),
        clock_timestamp() + %(lease_ms)s * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    elected_at = CASE WHEN l.holder = excluded.holder THEN l.elected_at ELSE excluded.elected_at END,
    expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at < clock_timestamp()
RETURNING holder, elected_at, expires_at;

-- name: leader_resign
DELETE FROM {schema}.leader WHERE name = %(name)s AND holder = %(holder)s;

-- name: leader_get
SELECT holder, elected_at, expires_at, expires_at > clock_timestamp() AS live
FROM {schema}.leader WHERE name = %(name)s;

-- name: clock_now
SELECT clock_timestamp();
