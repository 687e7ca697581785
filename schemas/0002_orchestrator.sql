-- 0002_orchestrator: what the maintenance services need.

-- A running attempt cut short by the job's overall timeout is logged as such.
ALTER TABLE {schema}.job_attempt DROP CONSTRAINT job_attempt_outcome_check;
ALTER TABLE {schema}.job_attempt ADD CONSTRAINT job_attempt_outcome_check
    CHECK (outcome IN ('succeeded', 'failed', 'lost', 'interrupted', 'timed_out'));

-- Timeouts scan unfinished jobs of one definition by run_at.
CREATE INDEX job_unfinished_run_at_idx ON {schema}.job (definition, run_at)
    WHERE finalized_at IS NULL;
-- The repeat scheduler's overlap check: unfinished tick jobs of a definition.
CREATE INDEX job_unfinished_tick_idx ON {schema}.job (definition)
    WHERE tick_at IS NOT NULL AND finalized_at IS NULL;
-- Rescue of the jobs of a worker whose heartbeat went stale.
CREATE INDEX job_locked_by_idx ON {schema}.job (locked_by) WHERE status = 'running';

-- Finalized jobs moved out of the hot table when the orchestrator runs with
-- archive=True. Not referenced by anything.
CREATE TABLE {schema}.job_archive (
    id            bigint      PRIMARY KEY,
    definition    text        NOT NULL,
    channel       text        NOT NULL,
    status        {schema}.job_status NOT NULL,
    priority      smallint    NOT NULL,
    payload       jsonb       NOT NULL,
    result        jsonb       NULL,
    attempt       integer     NOT NULL,
    max_attempts  integer     NOT NULL,
    run_at        timestamptz NOT NULL,
    unique_key    text        NULL,
    resource_key  text        NULL,
    tick_at       timestamptz NULL,
    created_at    timestamptz NOT NULL,
    started_at    timestamptz NULL,
    finalized_at  timestamptz NOT NULL,
    last_error    text        NULL,
    attempts      jsonb       NOT NULL DEFAULT '[]',
    archived_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_archive_finalized_idx ON {schema}.job_archive (finalized_at);
