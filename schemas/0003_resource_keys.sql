-- 0003_resource_keys: indexes of the resource-keyed claim.
--
-- A job with a resource_key is flagged `limited`, so the plain claim branch
-- (job_claim_idx) never sees it; it is claimed through a branch that only
-- takes the head of each key (highest priority, then lowest id, per channel)
-- and only when no job of that key is running.

-- The keyed claim branch: available keyed jobs of a channel in claim order.
CREATE INDEX job_claim_resource_idx ON {schema}.job (channel, priority DESC, id)
    WHERE status = 'available' AND resource_key IS NOT NULL;
-- The head-of-key check: is there a better available job with the same key?
CREATE INDEX job_resource_head_idx ON {schema}.job (resource_key, channel, priority DESC, id)
    WHERE status = 'available' AND resource_key IS NOT NULL;

-- Jobs deferred with a resource key before this migration follow the rule.
UPDATE {schema}.job SET limited = true
WHERE resource_key IS NOT NULL AND finalized_at IS NULL AND NOT limited;
