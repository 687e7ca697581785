-- 0009_tags_meta_progress: tags and metadata given at defer, and the progress
-- a running job reports (docs/decisions/0033).
--
--   tags      labels to find jobs by (`jobs list --tag`): at most 20 printable
--             strings of at most 100 characters each, checked in Python
--             before anything is written; '{{}}' when none were given.
--   meta      a JSON object of the producer's, read back by the job
--             (ctx.meta) and by people: at most 8 KiB, checked in Python;
--             '{{}}' when none was given.
--   progress  what the running attempt last reported (ctx.set_progress): a
--             fraction from 0 to 1 or a JSON object; NULL until a job reports.
--             Written by the worker at most every 0.5 s per job, fenced by the
--             attempt's lock token, and with the attempt's finish.
--
-- Added with constant defaults: no table rewrite, instant on a large queue.
-- Both tables get the three columns: a job's row moves between them whole
-- (decision 0019), and every statement that moves one carries them.
ALTER TABLE {schema}.job
    ADD COLUMN tags text[] NOT NULL DEFAULT '{{}}',
    ADD COLUMN meta jsonb NOT NULL DEFAULT '{{}}',
    ADD COLUMN progress jsonb NULL;
ALTER TABLE {schema}.job_history
    ADD COLUMN tags text[] NOT NULL DEFAULT '{{}}',
    ADD COLUMN meta jsonb NOT NULL DEFAULT '{{}}',
    ADD COLUMN progress jsonb NULL;

-- The views show them too; new columns go at the end (CREATE OR REPLACE VIEW
-- may only add columns there).
CREATE OR REPLACE VIEW {schema}.all_jobs WITH (security_invoker = true) AS
SELECT j.id, j.definition, j.channel, j.status, j.priority, j.payload, j.result, j.attempt,
       j.max_attempts, j.run_at, j.unique_key, j.resource_key, j.tick_at, j.created_at,
       j.started_at, j.finalized_at, j.last_error, j.trace_context, j.created_by,
       j.locked_by, j.lock_token, j.locked_until, false AS finished,
       j.tags, j.meta, j.progress
FROM {schema}.job j
UNION ALL
SELECT h.id, h.definition, h.channel, h.status, h.priority, h.payload, h.result, h.attempt,
       h.max_attempts, h.run_at, h.unique_key, h.resource_key, h.tick_at, h.created_at,
       h.started_at, h.finalized_at, h.last_error, h.trace_context, h.created_by,
       NULL::bigint, NULL::uuid, NULL::timestamptz, true,
       h.tags, h.meta, h.progress
FROM {schema}.job_history h;
