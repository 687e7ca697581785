-- 0001_initial: definitions, jobs, attempts, dependencies, workers, leader lease.
--
-- Format: {schema} is replaced by the quoted, validated schema name
-- (psycopg.sql.Identifier); literal braces are therefore written doubled.
-- The migrator runs this file inside one transaction, under an advisory lock,
-- after creating the schema and the schema_version table.

CREATE TYPE {schema}.job_status AS ENUM (
    'waiting',      -- held back: dependencies not yet satisfied
    'available',    -- runnable once run_at has passed
    'running',      -- claimed by a worker; lease in locked_until
    'succeeded',    -- final
    'failed',       -- final
    'cancelled'     -- final
);

-- One row per job definition name; settings are upserted by every process that
-- carries the definition (last writer wins), timestamps belong to the daemons.
CREATE TABLE {schema}.job_definition (
    name                text        PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    channel             text        NOT NULL CHECK (length(channel) BETWEEN 1 AND 128),
    num_attempts        integer     NOT NULL CHECK (num_attempts >= 1),
    backoff             text        NOT NULL CHECK (backoff IN ('none', 'fixed', 'exponential')),
    backoff_base_ms     bigint      NOT NULL CHECK (backoff_base_ms >= 0),
    backoff_max_ms      bigint      NOT NULL CHECK (backoff_max_ms >= 0),
    priority            smallint    NOT NULL,
    repeat_interval_ms  bigint      NULL CHECK (repeat_interval_ms >= 0),
    cron                text        NULL,
    release_interval_ms bigint      NOT NULL DEFAULT 0 CHECK (release_interval_ms >= 0),
    max_concurrency     integer     NULL CHECK (max_concurrency >= 1),
    lock_interval_ms    bigint      NOT NULL CHECK (lock_interval_ms >= 0),
    timeout_interval_ms bigint      NOT NULL CHECK (timeout_interval_ms >= 0),
    last_repeated_at    timestamptz NULL,
    next_tick_at        timestamptz NULL,
    last_released_at    timestamptz NULL,
    last_heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    paused              boolean     NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The hot table. Autovacuum runs far more often than the defaults because
-- every job is updated at least twice and then deleted. The fillfactor below
-- 100 leaves free room on each page for HOT updates, but an update can be HOT
-- only when it changes no indexed column, the columns of a partial index's
-- WHERE clause included. Here none of the job's updates qualifies: the claim,
-- a retry and the finalization change status, which the WHERE clauses of the
-- claim and running indexes read (and finalized_at, which job_finalized_idx
-- indexes), and the lease extension changes locked_until, which
-- job_running_idx indexes. 0007_hot_table drops that index and sets the
-- fillfactor to 90.
CREATE TABLE {schema}.job (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    definition    text        NOT NULL REFERENCES {schema}.job_definition (name),
    channel       text        NOT NULL,
    status        {schema}.job_status NOT NULL DEFAULT 'available',
    priority      smallint    NOT NULL DEFAULT 0,
    payload       jsonb       NOT NULL,
    result        jsonb       NULL,
    attempt       integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts  integer     NOT NULL CHECK (max_attempts >= 1),
    run_at        timestamptz NOT NULL DEFAULT now(),
    locked_by     bigint      NULL,
    lock_token    uuid        NULL,
    locked_until  timestamptz NULL,
    unique_key    text        NULL,
    resource_key  text        NULL,
    tick_at       timestamptz NULL,
    -- Its definition has a rate limit or max_concurrency: claimed only through
    -- the guarded path, which locks the definition row. Kept in step with the
    -- definition by definition_upsert.
    limited       boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz NULL,
    finalized_at  timestamptz NULL,
    last_error    text        NULL,
    CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (finalized_at IS NOT NULL)),
    CHECK ((status = 'running') = (lock_token IS NOT NULL))
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim: available jobs of one channel, higher priority first, then FIFO.
CREATE INDEX job_claim_idx ON {schema}.job (channel, priority DESC, id)
    WHERE status = 'available' AND NOT limited;
-- The guarded claim of rate-limited definitions, per definition.
CREATE INDEX job_claim_limited_idx ON {schema}.job (definition, priority DESC, id)
    WHERE status = 'available' AND limited;
-- Lease expiry and worker rescue scan only running jobs.
CREATE INDEX job_running_idx ON {schema}.job (locked_until)
    WHERE status = 'running';
-- Sweeps of finalized jobs, oldest first.
CREATE INDEX job_finalized_idx ON {schema}.job (finalized_at)
    WHERE finalized_at IS NOT NULL;
-- Jobs held for dependencies.
CREATE INDEX job_waiting_idx ON {schema}.job (id) WHERE status = 'waiting';
-- Listing and management by definition.
CREATE INDEX job_definition_idx ON {schema}.job (definition, id);
-- Exactly-once work: one job per repeat tick, one unfinished job per unique key,
-- at most one running job per resource key.
CREATE UNIQUE INDEX job_tick_uniq ON {schema}.job (definition, tick_at)
    WHERE tick_at IS NOT NULL;
CREATE UNIQUE INDEX job_unique_key_uniq ON {schema}.job (definition, unique_key)
    WHERE unique_key IS NOT NULL AND finalized_at IS NULL;
CREATE UNIQUE INDEX job_resource_running_uniq ON {schema}.job (resource_key)
    WHERE resource_key IS NOT NULL AND status = 'running';

-- The attempt log: one row per attempt that ended, whatever the
-- way it ended. Rows go with their job.
CREATE TABLE {schema}.job_attempt (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       bigint      NOT NULL REFERENCES {schema}.job (id) ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    worker_id    bigint      NULL,
    worker_name  text        NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    outcome      text        NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'lost', 'interrupted')),
    error        text        NULL,
    traceback    text        NULL
);
CREATE INDEX job_attempt_job_idx ON {schema}.job_attempt (job_id, attempt);

CREATE TABLE {schema}.job_dependency (
    job_id          bigint NOT NULL REFERENCES {schema}.job (id) ON DELETE CASCADE,
    required_job_id bigint NOT NULL REFERENCES {schema}.job (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, required_job_id)
);
CREATE INDEX job_dependency_required_idx ON {schema}.job_dependency (required_job_id);

-- Live daemons. Heartbeats go here, not on the hot job rows.
CREATE TABLE {schema}.worker (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('worker', 'orchestrator')),
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    channel      text        NULL,
    concurrency  integer     NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX worker_heartbeat_idx ON {schema}.worker (heartbeat_at);

-- The orchestrator leader lease: one row per lease name, expiry on the
-- database clock. UNLOGGED: a lease need not survive a crash of the server.
CREATE UNLOGGED TABLE {schema}.leader (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    elected_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
