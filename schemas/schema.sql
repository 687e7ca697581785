-- The whole current schema of an orchestra queue, as the migrations
-- 0001 to 0010_snooze_and_cancel build it: for reading.
--
-- Generated with PostgreSQL 15: do not edit. After adding a migration, run
-- `make schema` (python -m orchestra._schema_dump), which applies every
-- migration to a throwaway schema and dumps it with pg_dump --schema-only.
-- `orchestra migrate` never runs this file: it applies the numbered
-- migrations, on a new schema as on an old one. The migrations say why each
-- object is the way it is; tests/integration/test_schema_file.py checks that
-- this file builds the same schema as they do.
--
-- Format as the migrations: {schema} stands for the quoted schema name, and
-- literal braces are doubled. pg_dump's order: each kind of object together
-- (functions, tables and views, identities, partitions, keys, indexes, row
-- security, privileges), by name within a kind. The history partitions are
-- those the last migration makes on an empty schema.

-- Functions come before the tables they read: their bodies are checked when
-- they run, not when they are created.
SET check_function_bodies = false;

CREATE SCHEMA {schema};

CREATE TYPE {schema}.job_status AS ENUM (
    'waiting',
    'available',
    'running',
    'succeeded',
    'failed',
    'cancelled'
);

CREATE FUNCTION {schema}.definition_ensure(p_name text, p_channel text, p_num_attempts integer, p_backoff text, p_backoff_base_ms bigint, p_backoff_max_ms bigint, p_priority smallint, p_repeat_interval_ms bigint, p_cron text, p_release_interval_ms bigint, p_max_concurrency integer, p_lock_interval_ms bigint, p_timeout_interval_ms bigint) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
    INSERT INTO {schema}.job_definition AS d (
        name, channel, num_attempts, backoff, backoff_base_ms, backoff_max_ms, priority,
        repeat_interval_ms, cron, release_interval_ms, max_concurrency,
        lock_interval_ms, timeout_interval_ms
    ) VALUES (
        p_name, p_channel, greatest(p_num_attempts, 1), p_backoff,
        greatest(p_backoff_base_ms, 0), greatest(p_backoff_max_ms, 0), p_priority,
        CASE WHEN p_repeat_interval_ms IS NULL THEN NULL
             ELSE greatest(p_repeat_interval_ms, 0) END,
        p_cron, greatest(p_release_interval_ms, 0), p_max_concurrency,
        greatest(p_lock_interval_ms, 0), greatest(p_timeout_interval_ms, 0)
    )
    ON CONFLICT (name) DO UPDATE SET last_heartbeat_at = pg_catalog.now()
$$;

CREATE FUNCTION {schema}.job_created_by_caller(p_job_id bigint) RETURNS boolean
    LANGUAGE sql
    SET search_path TO 'pg_catalog'
    AS $$
    SELECT EXISTS (
        SELECT 1 FROM {schema}.job j
        WHERE j.id = p_job_id AND j.created_by = current_user)
$$;

CREATE FUNCTION {schema}.job_dependencies_met(p_job_id bigint) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM {schema}.job_dependency d
        WHERE d.job_id = p_job_id
          AND NOT EXISTS (SELECT 1 FROM {schema}.job_history h
                          WHERE h.id = d.required_job_id AND h.status = 'succeeded'))
$$;

CREATE FUNCTION {schema}.job_find_unique(p_definition text, p_unique_key text) RETURNS SETOF bigint
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
    SELECT j.id FROM {schema}.job j
    WHERE j.definition = p_definition AND j.unique_key = p_unique_key
$$;

CREATE FUNCTION {schema}.job_history_drop_before(p_cutoff timestamp with time zone, p_limit integer) RETURNS TABLE(partition_name text, jobs bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    p record;
    newest timestamptz;
    highest_lo bigint;
    reached bigint;
    n bigint;
    dropped integer := 0;
BEGIN
    SELECT max(parts.lo) INTO highest_lo FROM {schema}.job_history_partitions() parts;
    SELECT last_value INTO reached FROM {schema}.job_id_seq;
    FOR p IN SELECT * FROM {schema}.job_history_partitions() parts ORDER BY parts.lo LOOP
        EXIT WHEN dropped >= p_limit;
        CONTINUE WHEN p.lo IS NULL OR p.hi IS NULL;  -- not one of ours
        EXIT WHEN p.lo >= highest_lo OR reached < p.hi;
        EXECUTE format('SELECT max(finalized_at) FROM %s.%I', '{schema}', p.name) INTO newest;
        CONTINUE WHEN newest >= p_cutoff;
        LOCK TABLE {schema}.job_history IN ACCESS EXCLUSIVE MODE;
        EXECUTE format('SELECT max(finalized_at), count(*) FROM %s.%I', '{schema}', p.name)
            INTO newest, n;
        CONTINUE WHEN newest >= p_cutoff;
        -- Edges of jobs of the range that are still unfinished stay: they
        -- hold those jobs back.
        DELETE FROM {schema}.job_dependency d
        WHERE d.job_id >= p.lo AND d.job_id < p.hi
          AND NOT EXISTS (SELECT 1 FROM {schema}.job j WHERE j.id = d.job_id);
        EXECUTE format('DROP TABLE %s.%I', '{schema}', p.name);
        dropped := dropped + 1;
        partition_name := p.name;
        jobs := n;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE FUNCTION {schema}.job_history_partitions() RETURNS TABLE(name text, lo bigint, hi bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT c.relname::text,
           pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                'FROM \(''?(\d+)''?\)')::bigint,
           pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                'TO \(''?(\d+)''?\)')::bigint
    FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = '{schema}.job_history'::pg_catalog.regclass
      AND c.relname <> 'job_history_default'
$$;

CREATE FUNCTION {schema}.job_history_prepare(p_from bigint, p_to bigint, p_width bigint) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    range_lo bigint;
    made integer := 0;
    part text;
    reached bigint;
BEGIN
    IF p_width < 1 THEN
        RAISE EXCEPTION 'job_history_prepare: width must be at least 1, got %', p_width;
    END IF;
    SELECT last_value INTO reached FROM {schema}.job_id_seq;
    range_lo := (greatest(p_from, 0) / p_width) * p_width;
    WHILE range_lo < p_to LOOP
        part := 'job_history_' || range_lo;
        IF to_regclass(format('%s.%I', '{schema}', part)) IS NULL
           AND NOT EXISTS (
               -- a range made with another width may overlap this one
               SELECT 1 FROM {schema}.job_history_partitions() p
               WHERE coalesce(p.lo < range_lo + p_width, true) AND coalesce(p.hi > range_lo, true))
        THEN
            EXECUTE format('CREATE TABLE %s.%I (LIKE {schema}.job_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           '{schema}', part);
            -- Row security with no policy: a role that names the partition
            -- directly sees and changes nothing; through the parent, the
            -- parent's grants and policies apply (deploy/sql/roles.sql).
            EXECUTE format('ALTER TABLE %s.%I ENABLE ROW LEVEL SECURITY', '{schema}', part);
            -- Ids of this range may already exist (give or take the ids taken
            -- while this runs): their finishes may be in the default
            -- partition, and more may arrive until the attach.
            IF range_lo <= reached + p_width THEN
                LOCK TABLE {schema}.job_history IN SHARE ROW EXCLUSIVE MODE;
                LOCK TABLE {schema}.job_history_default IN ACCESS EXCLUSIVE MODE;
                EXECUTE format('WITH moved AS (DELETE FROM {schema}.job_history_default WHERE id >= %s AND id < %s RETURNING *) '
                               'INSERT INTO %s.%I SELECT * FROM moved', range_lo, range_lo + p_width, '{schema}', part);
            END IF;
            EXECUTE format('ALTER TABLE {schema}.job_history ATTACH PARTITION %s.%I FOR VALUES FROM (%s) TO (%s)',
                           '{schema}', part, range_lo, range_lo + p_width);
            made := made + 1;
        END IF;
        range_lo := range_lo + p_width;
    END LOOP;
    RETURN made;
END
$$;

CREATE FUNCTION {schema}.job_recheck_waiting(p_job_id bigint, p_notify_channel text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
DECLARE
    woken bigint;
BEGIN
    -- Wait for a finish in flight on a dependency (it holds the row until it
    -- commits, and deletes it), and make a later finish wait for us.
    -- In id order, as a worker's finish locks the rows of its batch, so that
    -- the two meet in the same order.
    PERFORM 1 FROM {schema}.job j
    WHERE j.id IN (SELECT d.required_job_id FROM {schema}.job_dependency d
                   WHERE d.job_id = p_job_id)
    ORDER BY j.id
    FOR SHARE;
    -- A new statement, so a new snapshot: it sees the history rows of the
    -- finishes waited for above.
    WITH released AS (
        UPDATE {schema}.job j SET status = 'available'
        WHERE j.id = p_job_id AND j.status = 'waiting'
          AND {schema}.job_dependencies_met(p_job_id)
        RETURNING j.channel
    )
    SELECT count(pg_catalog.pg_notify(p_notify_channel, released.channel)) INTO woken FROM released;
    RETURN woken;
END
$$;

CREATE FUNCTION {schema}.worker_deregister(p_worker_id bigint, p_secret text) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
    WITH deleted AS (
        DELETE FROM {schema}.worker
        WHERE id = p_worker_id AND secret_hash = sha256(convert_to(p_secret, 'UTF8'))
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM deleted)
$$;

CREATE FUNCTION {schema}.worker_touch(p_worker_id bigint, p_secret text) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
    WITH touched AS (
        UPDATE {schema}.worker SET heartbeat_at = clock_timestamp()
        WHERE id = p_worker_id AND secret_hash = sha256(convert_to(p_secret, 'UTF8'))
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM touched)
$$;

CREATE TABLE {schema}.job_attempt (
    id bigint NOT NULL,
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    worker_id bigint,
    worker_name text,
    started_at timestamp with time zone NOT NULL,
    finished_at timestamp with time zone DEFAULT now() NOT NULL,
    outcome text NOT NULL,
    error text,
    traceback text,
    lock_token uuid,
    CONSTRAINT job_attempt_outcome_check CHECK ((outcome = ANY (ARRAY['succeeded'::text, 'failed'::text, 'lost'::text, 'interrupted'::text, 'timed_out'::text, 'snoozed'::text, 'cancelled'::text])))
);

CREATE TABLE {schema}.job_history (
    id bigint NOT NULL,
    definition text NOT NULL,
    channel text NOT NULL,
    status {schema}.job_status NOT NULL,
    priority smallint NOT NULL,
    payload jsonb NOT NULL,
    result jsonb,
    attempt integer NOT NULL,
    max_attempts integer NOT NULL,
    run_at timestamp with time zone NOT NULL,
    unique_key text,
    resource_key text,
    tick_at timestamp with time zone,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finalized_at timestamp with time zone NOT NULL,
    last_error text,
    attempts jsonb DEFAULT '[]'::jsonb NOT NULL,
    trace_context text,
    created_by text,
    worker_id bigint,
    worker_name text,
    lock_token uuid,
    tags text[] DEFAULT '{{}}'::text[] NOT NULL,
    meta jsonb DEFAULT '{{}}'::jsonb NOT NULL,
    progress jsonb,
    CONSTRAINT job_history_status_check CHECK ((status = ANY (ARRAY['succeeded'::{schema}.job_status, 'failed'::{schema}.job_status, 'cancelled'::{schema}.job_status])))
)
PARTITION BY RANGE (id);

CREATE VIEW {schema}.all_job_attempts WITH (security_invoker='true') AS
 SELECT a.id,
    a.job_id,
    a.attempt,
    a.worker_id,
    a.worker_name,
    a.started_at,
    a.finished_at,
    a.outcome,
    a.error,
    a.traceback,
    a.lock_token
   FROM {schema}.job_attempt a
UNION ALL
 SELECT ((e.value ->> 'id'::text))::bigint AS id,
    h.id AS job_id,
    ((e.value ->> 'attempt'::text))::integer AS attempt,
    ((e.value ->> 'worker_id'::text))::bigint AS worker_id,
    (e.value ->> 'worker_name'::text) AS worker_name,
    ((e.value ->> 'started_at'::text))::timestamp with time zone AS started_at,
    ((e.value ->> 'finished_at'::text))::timestamp with time zone AS finished_at,
    (e.value ->> 'outcome'::text) AS outcome,
    (e.value ->> 'error'::text) AS error,
    (e.value ->> 'traceback'::text) AS traceback,
    ((e.value ->> 'lock_token'::text))::uuid AS lock_token
   FROM ({schema}.job_history h
     CROSS JOIN LATERAL jsonb_array_elements(h.attempts) e(value))
UNION ALL
 SELECT NULL::bigint AS id,
    h.id AS job_id,
    h.attempt,
    h.worker_id,
    h.worker_name,
    h.started_at,
    h.finalized_at AS finished_at,
    'succeeded'::text AS outcome,
    NULL::text AS error,
    NULL::text AS traceback,
    h.lock_token
   FROM {schema}.job_history h
  WHERE (h.status = 'succeeded'::{schema}.job_status);

CREATE TABLE {schema}.job (
    id bigint NOT NULL,
    definition text NOT NULL,
    channel text NOT NULL,
    status {schema}.job_status DEFAULT 'available'::{schema}.job_status NOT NULL,
    priority smallint DEFAULT 0 NOT NULL,
    payload jsonb NOT NULL,
    result jsonb,
    attempt integer DEFAULT 0 NOT NULL,
    max_attempts integer NOT NULL,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    locked_by bigint,
    lock_token uuid,
    locked_until timestamp with time zone,
    unique_key text,
    resource_key text,
    tick_at timestamp with time zone,
    limited boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finalized_at timestamp with time zone,
    last_error text,
    trace_context text,
    created_by text DEFAULT CURRENT_USER,
    tags text[] DEFAULT '{{}}'::text[] NOT NULL,
    meta jsonb DEFAULT '{{}}'::jsonb NOT NULL,
    progress jsonb,
    CONSTRAINT job_attempt_check CHECK ((attempt >= 0)),
    CONSTRAINT job_check1 CHECK (((status = 'running'::{schema}.job_status) = (lock_token IS NOT NULL))),
    CONSTRAINT job_max_attempts_check CHECK ((max_attempts >= 1)),
    CONSTRAINT job_unfinished_check CHECK (((status = ANY (ARRAY['waiting'::{schema}.job_status, 'available'::{schema}.job_status, 'running'::{schema}.job_status])) AND (finalized_at IS NULL) AND (result IS NULL)))
)
WITH (autovacuum_vacuum_scale_factor='0.01', autovacuum_vacuum_insert_scale_factor='0.01', autovacuum_analyze_scale_factor='0.02', autovacuum_vacuum_cost_delay='0', fillfactor='90');

CREATE VIEW {schema}.all_jobs WITH (security_invoker='true') AS
 SELECT j.id,
    j.definition,
    j.channel,
    j.status,
    j.priority,
    j.payload,
    j.result,
    j.attempt,
    j.max_attempts,
    j.run_at,
    j.unique_key,
    j.resource_key,
    j.tick_at,
    j.created_at,
    j.started_at,
    j.finalized_at,
    j.last_error,
    j.trace_context,
    j.created_by,
    j.locked_by,
    j.lock_token,
    j.locked_until,
    false AS finished,
    j.tags,
    j.meta,
    j.progress
   FROM {schema}.job j
UNION ALL
 SELECT h.id,
    h.definition,
    h.channel,
    h.status,
    h.priority,
    h.payload,
    h.result,
    h.attempt,
    h.max_attempts,
    h.run_at,
    h.unique_key,
    h.resource_key,
    h.tick_at,
    h.created_at,
    h.started_at,
    h.finalized_at,
    h.last_error,
    h.trace_context,
    h.created_by,
    NULL::bigint AS locked_by,
    NULL::uuid AS lock_token,
    NULL::timestamp with time zone AS locked_until,
    true AS finished,
    h.tags,
    h.meta,
    h.progress
   FROM {schema}.job_history h;

CREATE TABLE {schema}.channel_pause (
    channel text NOT NULL,
    paused_at timestamp with time zone DEFAULT now() NOT NULL,
    paused_by text DEFAULT CURRENT_USER,
    CONSTRAINT channel_pause_channel_check CHECK (((length(channel) >= 1) AND (length(channel) <= 128)))
);

ALTER TABLE {schema}.job_attempt ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME {schema}.job_attempt_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE {schema}.job_definition (
    name text NOT NULL,
    channel text NOT NULL,
    num_attempts integer NOT NULL,
    backoff text NOT NULL,
    backoff_base_ms bigint NOT NULL,
    backoff_max_ms bigint NOT NULL,
    priority smallint NOT NULL,
    repeat_interval_ms bigint,
    cron text,
    release_interval_ms bigint DEFAULT 0 NOT NULL,
    max_concurrency integer,
    lock_interval_ms bigint NOT NULL,
    timeout_interval_ms bigint NOT NULL,
    last_repeated_at timestamp with time zone,
    next_tick_at timestamp with time zone,
    last_released_at timestamp with time zone,
    last_heartbeat_at timestamp with time zone DEFAULT now() NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT job_definition_backoff_base_ms_check CHECK ((backoff_base_ms >= 0)),
    CONSTRAINT job_definition_backoff_check CHECK ((backoff = ANY (ARRAY['none'::text, 'fixed'::text, 'exponential'::text]))),
    CONSTRAINT job_definition_backoff_max_ms_check CHECK ((backoff_max_ms >= 0)),
    CONSTRAINT job_definition_channel_check CHECK (((length(channel) >= 1) AND (length(channel) <= 128))),
    CONSTRAINT job_definition_lock_interval_ms_check CHECK ((lock_interval_ms >= 0)),
    CONSTRAINT job_definition_max_concurrency_check CHECK ((max_concurrency >= 1)),
    CONSTRAINT job_definition_name_check CHECK (((length(name) >= 1) AND (length(name) <= 128))),
    CONSTRAINT job_definition_num_attempts_check CHECK ((num_attempts >= 1)),
    CONSTRAINT job_definition_release_interval_ms_check CHECK ((release_interval_ms >= 0)),
    CONSTRAINT job_definition_repeat_interval_ms_check CHECK ((repeat_interval_ms >= 0)),
    CONSTRAINT job_definition_timeout_interval_ms_check CHECK ((timeout_interval_ms >= 0))
);

CREATE TABLE {schema}.job_dependency (
    job_id bigint NOT NULL,
    required_job_id bigint NOT NULL
);

CREATE TABLE {schema}.job_history_0 (
    id bigint NOT NULL,
    definition text NOT NULL,
    channel text NOT NULL,
    status {schema}.job_status NOT NULL,
    priority smallint NOT NULL,
    payload jsonb NOT NULL,
    result jsonb,
    attempt integer NOT NULL,
    max_attempts integer NOT NULL,
    run_at timestamp with time zone NOT NULL,
    unique_key text,
    resource_key text,
    tick_at timestamp with time zone,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finalized_at timestamp with time zone NOT NULL,
    last_error text,
    attempts jsonb DEFAULT '[]'::jsonb NOT NULL,
    trace_context text,
    created_by text,
    worker_id bigint,
    worker_name text,
    lock_token uuid,
    tags text[] DEFAULT '{{}}'::text[] NOT NULL,
    meta jsonb DEFAULT '{{}}'::jsonb NOT NULL,
    progress jsonb,
    CONSTRAINT job_history_status_check CHECK ((status = ANY (ARRAY['succeeded'::{schema}.job_status, 'failed'::{schema}.job_status, 'cancelled'::{schema}.job_status])))
);

CREATE TABLE {schema}.job_history_1000000 (
    id bigint NOT NULL,
    definition text NOT NULL,
    channel text NOT NULL,
    status {schema}.job_status NOT NULL,
    priority smallint NOT NULL,
    payload jsonb NOT NULL,
    result jsonb,
    attempt integer NOT NULL,
    max_attempts integer NOT NULL,
    run_at timestamp with time zone NOT NULL,
    unique_key text,
    resource_key text,
    tick_at timestamp with time zone,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finalized_at timestamp with time zone NOT NULL,
    last_error text,
    attempts jsonb DEFAULT '[]'::jsonb NOT NULL,
    trace_context text,
    created_by text,
    worker_id bigint,
    worker_name text,
    lock_token uuid,
    tags text[] DEFAULT '{{}}'::text[] NOT NULL,
    meta jsonb DEFAULT '{{}}'::jsonb NOT NULL,
    progress jsonb,
    CONSTRAINT job_history_status_check CHECK ((status = ANY (ARRAY['succeeded'::{schema}.job_status, 'failed'::{schema}.job_status, 'cancelled'::{schema}.job_status])))
);

CREATE TABLE {schema}.job_history_2000000 (
    id bigint NOT NULL,
    definition text NOT NULL,
    channel text NOT NULL,
    status {schema}.job_status NOT NULL,
    priority smallint NOT NULL,
    payload jsonb NOT NULL,
    result jsonb,
    attempt integer NOT NULL,
    max_attempts integer NOT NULL,
    run_at timestamp with time zone NOT NULL,
    unique_key text,
    resource_key text,
    tick_at timestamp with time zone,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finalized_at timestamp with time zone NOT NULL,
    last_error text,
    attempts jsonb DEFAULT '[]'::jsonb NOT NULL,
    trace_context text,
    created_by text,
    worker_id bigint,
    worker_name text,
    lock_token uuid,
    tags text[] DEFAULT '{{}}'::text[] NOT NULL,
    meta jsonb DEFAULT '{{}}'::jsonb NOT NULL,
    progress jsonb,
    CONSTRAINT job_history_status_check CHECK ((status = ANY (ARRAY['succeeded'::{schema}.job_status, 'failed'::{schema}.job_status, 'cancelled'::{schema}.job_status])))
);

CREATE TABLE {schema}.job_history_default (
    id bigint NOT NULL,
    definition text NOT NULL,
    channel text NOT NULL,
    status {schema}.job_status NOT NULL,
    priority smallint NOT NULL,
    payload jsonb NOT NULL,
    result jsonb,
    attempt integer NOT NULL,
    max_attempts integer NOT NULL,
    run_at timestamp with time zone NOT NULL,
    unique_key text,
    resource_key text,
    tick_at timestamp with time zone,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finalized_at timestamp with time zone NOT NULL,
    last_error text,
    attempts jsonb DEFAULT '[]'::jsonb NOT NULL,
    trace_context text,
    created_by text,
    worker_id bigint,
    worker_name text,
    lock_token uuid,
    tags text[] DEFAULT '{{}}'::text[] NOT NULL,
    meta jsonb DEFAULT '{{}}'::jsonb NOT NULL,
    progress jsonb,
    CONSTRAINT job_history_status_check CHECK ((status = ANY (ARRAY['succeeded'::{schema}.job_status, 'failed'::{schema}.job_status, 'cancelled'::{schema}.job_status])))
);

ALTER TABLE {schema}.job ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME {schema}.job_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE UNLOGGED TABLE {schema}.leader (
    name text NOT NULL,
    holder text NOT NULL,
    elected_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE TABLE {schema}.schema_version (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE {schema}.worker (
    id bigint NOT NULL,
    name text NOT NULL,
    role text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    channel text,
    concurrency integer,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    heartbeat_at timestamp with time zone DEFAULT now() NOT NULL,
    registered_by text DEFAULT CURRENT_USER,
    secret_hash bytea,
    channels text[],
    CONSTRAINT worker_role_check CHECK ((role = ANY (ARRAY['worker'::text, 'orchestrator'::text])))
);

ALTER TABLE {schema}.worker ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME {schema}.worker_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE ONLY {schema}.job_history ATTACH PARTITION {schema}.job_history_0 FOR VALUES FROM ('0') TO ('1000000');

ALTER TABLE ONLY {schema}.job_history ATTACH PARTITION {schema}.job_history_1000000 FOR VALUES FROM ('1000000') TO ('2000000');

ALTER TABLE ONLY {schema}.job_history ATTACH PARTITION {schema}.job_history_2000000 FOR VALUES FROM ('2000000') TO ('3000000');

ALTER TABLE ONLY {schema}.job_history ATTACH PARTITION {schema}.job_history_default DEFAULT;

ALTER TABLE ONLY {schema}.channel_pause
    ADD CONSTRAINT channel_pause_pkey PRIMARY KEY (channel);

ALTER TABLE ONLY {schema}.job_attempt
    ADD CONSTRAINT job_attempt_pkey PRIMARY KEY (id);

ALTER TABLE ONLY {schema}.job_definition
    ADD CONSTRAINT job_definition_pkey PRIMARY KEY (name);

ALTER TABLE ONLY {schema}.job_dependency
    ADD CONSTRAINT job_dependency_pkey PRIMARY KEY (job_id, required_job_id);

ALTER TABLE ONLY {schema}.job_history
    ADD CONSTRAINT job_history_pkey PRIMARY KEY (id);

ALTER TABLE ONLY {schema}.job_history_0
    ADD CONSTRAINT job_history_0_pkey PRIMARY KEY (id);

ALTER TABLE ONLY {schema}.job_history_1000000
    ADD CONSTRAINT job_history_1000000_pkey PRIMARY KEY (id);

ALTER TABLE ONLY {schema}.job_history_2000000
    ADD CONSTRAINT job_history_2000000_pkey PRIMARY KEY (id);

ALTER TABLE ONLY {schema}.job_history_default
    ADD CONSTRAINT job_history_default_pkey PRIMARY KEY (id);

ALTER TABLE ONLY {schema}.job
    ADD CONSTRAINT job_pkey PRIMARY KEY (id);

ALTER TABLE ONLY {schema}.leader
    ADD CONSTRAINT leader_pkey PRIMARY KEY (name);

ALTER TABLE ONLY {schema}.schema_version
    ADD CONSTRAINT schema_version_pkey PRIMARY KEY (version);

ALTER TABLE ONLY {schema}.worker
    ADD CONSTRAINT worker_pkey PRIMARY KEY (id);

CREATE INDEX job_attempt_job_idx ON {schema}.job_attempt USING btree (job_id, attempt);

CREATE INDEX job_claim_idx ON {schema}.job USING btree (channel, priority DESC, id) WHERE ((status = 'available'::{schema}.job_status) AND (NOT limited));

CREATE INDEX job_claim_limited_idx ON {schema}.job USING btree (definition, priority DESC, id) WHERE ((status = 'available'::{schema}.job_status) AND limited);

CREATE INDEX job_claim_resource_idx ON {schema}.job USING btree (channel, priority DESC, id) WHERE ((status = 'available'::{schema}.job_status) AND (resource_key IS NOT NULL));

CREATE INDEX job_dependency_required_idx ON {schema}.job_dependency USING btree (required_job_id);

CREATE INDEX job_history_finalized_idx ON ONLY {schema}.job_history USING btree (finalized_at);

CREATE INDEX job_history_0_finalized_at_idx ON {schema}.job_history_0 USING btree (finalized_at);

CREATE INDEX job_history_1000000_finalized_at_idx ON {schema}.job_history_1000000 USING btree (finalized_at);

CREATE INDEX job_history_2000000_finalized_at_idx ON {schema}.job_history_2000000 USING btree (finalized_at);

CREATE INDEX job_history_default_finalized_at_idx ON {schema}.job_history_default USING btree (finalized_at);

CREATE INDEX job_locked_by_idx ON {schema}.job USING btree (locked_by) WHERE (status = 'running'::{schema}.job_status);

CREATE INDEX job_resource_head_idx ON {schema}.job USING btree (resource_key, channel, priority DESC, id) WHERE ((status = 'available'::{schema}.job_status) AND (resource_key IS NOT NULL));

CREATE UNIQUE INDEX job_resource_running_uniq ON {schema}.job USING btree (resource_key) WHERE ((resource_key IS NOT NULL) AND (status = 'running'::{schema}.job_status));

CREATE UNIQUE INDEX job_tick_uniq ON {schema}.job USING btree (definition, tick_at) WHERE (tick_at IS NOT NULL);

CREATE UNIQUE INDEX job_unique_key_uniq ON {schema}.job USING btree (definition, unique_key) WHERE (unique_key IS NOT NULL);

CREATE INDEX job_waiting_idx ON {schema}.job USING btree (id) WHERE (status = 'waiting'::{schema}.job_status);

CREATE INDEX worker_heartbeat_idx ON {schema}.worker USING btree (heartbeat_at);

ALTER INDEX {schema}.job_history_finalized_idx ATTACH PARTITION {schema}.job_history_0_finalized_at_idx;

ALTER INDEX {schema}.job_history_pkey ATTACH PARTITION {schema}.job_history_0_pkey;

ALTER INDEX {schema}.job_history_finalized_idx ATTACH PARTITION {schema}.job_history_1000000_finalized_at_idx;

ALTER INDEX {schema}.job_history_pkey ATTACH PARTITION {schema}.job_history_1000000_pkey;

ALTER INDEX {schema}.job_history_finalized_idx ATTACH PARTITION {schema}.job_history_2000000_finalized_at_idx;

ALTER INDEX {schema}.job_history_pkey ATTACH PARTITION {schema}.job_history_2000000_pkey;

ALTER INDEX {schema}.job_history_finalized_idx ATTACH PARTITION {schema}.job_history_default_finalized_at_idx;

ALTER INDEX {schema}.job_history_pkey ATTACH PARTITION {schema}.job_history_default_pkey;

ALTER TABLE {schema}.job_history_0 ENABLE ROW LEVEL SECURITY;

ALTER TABLE {schema}.job_history_1000000 ENABLE ROW LEVEL SECURITY;

ALTER TABLE {schema}.job_history_2000000 ENABLE ROW LEVEL SECURITY;

REVOKE ALL ON FUNCTION {schema}.job_history_drop_before(p_cutoff timestamp with time zone, p_limit integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION {schema}.job_history_partitions() FROM PUBLIC;

REVOKE ALL ON FUNCTION {schema}.job_history_prepare(p_from bigint, p_to bigint, p_width bigint) FROM PUBLIC;
