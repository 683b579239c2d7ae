-- Dashboards are told when an agent's part they heard of as failed (`message_failed`) went out
-- after all: a late status showed Meta took a send the sender gave up on as unanswered, or an
-- operator's replay sent it again. `failure_shown`: the last word dashboards had of the part is
-- its failure; set when a `message_failed` event is recorded as announced, cleared when the
-- correcting `message_recovered` is (wafleet::stages::announce_recoveries). Parts announced
-- failed before this migration count as shown, so a replay of one corrects it too.
ALTER TABLE outbound_messages ADD COLUMN failure_shown BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE outbound_messages SET failure_shown = TRUE
 WHERE state = 'failed' AND failure_announced AND kind IN ('agent', 'template');

-- The workers' sweep (every minute, in every worker) looks for agents' parts whose failure or
-- recovery no event announced yet (Redis refused it, or the stage stopped first): both sets are
-- small, the table is not.
CREATE INDEX outbound_messages_failure_unannounced ON outbound_messages (id)
    WHERE state = 'failed' AND NOT failure_announced AND kind IN ('agent', 'template');
CREATE INDEX outbound_messages_recovery_unannounced ON outbound_messages (id)
    WHERE failure_shown AND state = 'accepted';
