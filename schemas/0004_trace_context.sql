-- 0004_trace_context: the trace context of the producer, stored with the job.
--
-- When defer() runs inside a valid OpenTelemetry span, the globally configured
-- propagator writes its carrier (W3C: `traceparent`, and `tracestate` if any;
-- whatever else the propagator injects, such as `baggage`) and the carrier is
-- stored here as a compact JSON object of text values, for instance
--   {{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
-- (braces doubled here: this file is formatted with the schema name).
-- The worker hands it back on WorkerJobClaimed; orchestra.otel extracts it
-- with the same propagator. Plain text, not jsonb: nothing queries inside it,
-- and the database need not parse it on every insert. NULL when the producer
-- had no span or opentelemetry is not installed.
ALTER TABLE {schema}.job ADD COLUMN trace_context text NULL;
-- Carried into the archive by job_sweep_finalized.
ALTER TABLE {schema}.job_archive ADD COLUMN trace_context text NULL;
