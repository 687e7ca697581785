-- 0008_channels_and_pause: workers that serve several channels, and paused
-- channels (docs/decisions/0031). Paused definitions need nothing new:
-- job_definition.paused has existed since 0001.

-- The channels a worker serves, in the order it was given them. `channel`
-- stays, holding the first of them, for the dashboards and health checks of
-- the previous version during a rolling upgrade; readers of this version read
-- `channels` and fall back to `channel` for the rows of older workers, which
-- keep inserting `channel` alone until they are replaced. Orchestrators
-- register neither (NULL).
ALTER TABLE {schema}.worker ADD COLUMN channels text[] NULL;
UPDATE {schema}.worker SET channels = ARRAY[channel] WHERE channel IS NOT NULL;

-- Paused channels: no worker claims their jobs while a row exists. Channels
-- are free-form (a channel exists as soon as a definition or a job names
-- it), so a channel that has no job yet can be paused too. Claims read this
-- table once per statement (a handful of rows at most), not once per job.
CREATE TABLE {schema}.channel_pause (
    channel   text        PRIMARY KEY CHECK (length(channel) BETWEEN 1 AND 128),
    paused_at timestamptz NOT NULL DEFAULT now(),
    -- The database role that paused it.
    paused_by text        NULL DEFAULT current_user
);
