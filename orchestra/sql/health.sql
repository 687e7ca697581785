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

-- name: health_vacuum_horizon
-- What keeps autovacuum from cleaning the job table, in one row: the holder
-- of the oldest snapshot or transaction id on this database (a session, a
-- prepared transaction, or a replication slot's xmin, which holds back every
-- database), and the job table's live and dead row counts. Also read by the
-- orchestrator's gauges (metrics) and the dashboard's overview.
--
-- The query text of a session is never read: it may carry secrets. A role
-- without pg_read_all_stats (pg_monitor) sees other roles' backend_xmin but
-- not their xact_start or state: such a holder comes back with a NULL age_s
-- and hidden = true. The holder is the one whose snapshot is oldest in
-- transactions (what vacuum is held back by), then in time. Without any
-- holder every holder column is NULL; without statistics for the job table
-- its columns are NULL. Cost: a scan of pg_stat_activity (one row per
-- connection of the server); no lock on any queue table.
WITH holders AS (
    SELECT 'session' AS kind, a.pid, a.state, a.application_name,
           a.usename::text AS user_name, NULL::text AS name,
           extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS age_s,
           greatest(age(a.backend_xmin), age(a.backend_xid)) AS xid_age,
           NOT coalesce(pg_has_role('pg_read_all_stats', 'USAGE')
                        OR pg_has_role(a.usesysid, 'USAGE'), false) AS hidden
    FROM pg_stat_activity a
    WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
      AND a.pid <> pg_backend_pid()
      -- Sessions of other databases do not hold back this one's tables;
      -- a physical walsender (no database) does.
      AND (a.datname IS NULL OR a.datname = current_database())
    UNION ALL
    SELECT 'prepared', NULL, 'prepared', NULL, p.owner::text, p.gid,
           extract(epoch FROM clock_timestamp() - p.prepared)::float8,
           age(p.transaction), false
    FROM pg_prepared_xacts p
    WHERE p.database = current_database()
    UNION ALL
    SELECT 'replication_slot', s.active_pid, CASE WHEN s.active THEN 'active' ELSE 'inactive' END,
           NULL, NULL, s.slot_name::text, NULL, age(s.xmin), false
    FROM pg_replication_slots s
    WHERE s.xmin IS NOT NULL
), oldest AS (
    SELECT * FROM holders ORDER BY xid_age DESC NULLS LAST, age_s DESC NULLS LAST LIMIT 1
), job_table AS (
    SELECT t.n_live_tup, t.n_dead_tup, t.last_autovacuum, t.last_vacuum
    FROM pg_stat_user_tables t
    WHERE t.schemaname = %(schema)s AND t.relname = 'job'
)
SELECT o.kind, o.pid, o.state, o.application_name, o.user_name, o.name, o.age_s,
       o.xid_age, o.hidden,
       (SELECT count(*) FROM holders) AS holders,
       t.n_live_tup AS job_live_tuples, t.n_dead_tup AS job_dead_tuples,
       t.last_autovacuum AS job_last_autovacuum, t.last_vacuum AS job_last_vacuum
FROM (SELECT) AS one
LEFT JOIN oldest o ON true
LEFT JOIN job_table t ON true;
