-- Human agents write to customers through wafleet (`wafleetctl conversation reply`): an agent's
-- message is recorded as outbound parts of kind 'agent', not tied to a customer's message, and
-- sent by the sender stage like the bot's (fleet-wide rate limits, at most once once Meta
-- accepted it, delivery statuses). `agent_ref` makes the request idempotent: the same reference
-- in the same conversation never records, nor sends, a message twice. `agent` names who wrote it.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_kind_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_kind_check
    CHECK (kind IN ('reply', 'handover_ack', 'notice', 'agent'));
ALTER TABLE outbound_messages ADD COLUMN agent_ref TEXT, ADD COLUMN agent TEXT;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_agent_ref_check
    CHECK ((kind = 'agent') = (agent_ref IS NOT NULL));
CREATE UNIQUE INDEX outbound_messages_agent_ref
    ON outbound_messages (conversation_id, agent_ref, part_no) WHERE agent_ref IS NOT NULL;
