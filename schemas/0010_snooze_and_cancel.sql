-- 0010_snooze_and_cancel: two more outcomes of an attempt (docs/decisions/0035).
--
--   snoozed    the job function snoozed (orchestra.Snooze): the job is due
--              again later and the attempt was refunded; the entry's error
--              says for how long. Written by the worker's finish.
--   cancelled  the job was cancelled while this attempt ran; its worker
--              stops the attempt. Written by the cancel into the history's
--              attempt log (an entry `interrupted` before this version), and
--              moved here by a retry of the cancelled job.
--
-- job_attempt holds the log of unfinished jobs only (decision 0019), so the
-- constraint's check of the existing rows reads a small table.
ALTER TABLE {schema}.job_attempt DROP CONSTRAINT job_attempt_outcome_check;
ALTER TABLE {schema}.job_attempt ADD CONSTRAINT job_attempt_outcome_check
    CHECK (outcome IN ('succeeded', 'failed', 'lost', 'interrupted', 'timed_out', 'snoozed',
                       'cancelled'));
