-- Queries of the gauges service (orchestra/_orchestrator/_gauges.py): a
-- snapshot of the queue for metrics, read by the leader every
-- gauges_interval_ms (default 15 s).

-- name: metrics_gauges
-- Unfinished jobs per status and channel, and live daemons per role, in one
-- statement (one snapshot, one round trip). Rows: (kind, label, channel, n)
-- with kind 'depth' (label = status) or 'workers' (label = role, channel NULL).
--
-- Cost: the hot table holds unfinished jobs only (finished ones are in
-- job_history), so the pass is one scan of it and grows with the backlog, not
-- with the finished jobs the history keeps: a few ms for thousands of
-- unfinished jobs, about a second per few million. Finished statuses are not
-- counted: their rates are the job counters. Every channel of a definition is
-- reported with its three statuses, 0 included, so a drained queue reads 0
-- rather than vanishing. The worker table is small.
WITH counted AS (
    SELECT status::text AS status, channel, count(*) AS n
    FROM {schema}.job
    GROUP BY status, channel
), channels AS (
    SELECT channel FROM {schema}.job_definition
    UNION
    SELECT channel FROM counted
)
SELECT 'depth' AS kind, s.status AS label, c.channel, coalesce(counted.n, 0)::bigint AS n
FROM channels c
CROSS JOIN unnest(ARRAY['waiting', 'available', 'running']) AS s(status)
LEFT JOIN counted ON counted.status = s.status AND counted.channel = c.channel
UNION ALL
SELECT 'workers', r.role, NULL, count(w.id)
FROM unnest(ARRAY['worker', 'orchestrator']) AS r(role)
LEFT JOIN {schema}.worker w
    ON w.role = r.role
    AND w.heartbeat_at >= coalesce(%(now)s::timestamptz, clock_timestamp())
                          - %(threshold_ms)s * interval '1 millisecond'
GROUP BY r.role
ORDER BY 1, 2, 3;
