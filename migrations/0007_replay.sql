-- Retries of a part are bounded in attempts and in age (WAFLEET_SEND_MAX_ATTEMPTS,
-- WAFLEET_SEND_MAX_AGE_MS). The age counts from created_at, or from retries_since once an operator
-- replayed the part's dead letter (`wafleetctl dead replay sender`): a replay starts a fresh
-- round of retries.
ALTER TABLE outbound_messages ADD COLUMN retries_since TIMESTAMPTZ;
