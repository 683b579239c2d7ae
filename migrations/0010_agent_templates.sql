-- Agents re-engage a customer outside the 24-hour window with an approved template
-- (`wafleetctl conversation template`): a part of kind 'template' whose body is the Graph API's
-- `template` object as JSON, sent by the sender stage like an agent's message.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_kind_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_kind_check
    CHECK (kind IN ('reply', 'handover_ack', 'notice', 'agent', 'template'));
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_agent_ref_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_agent_ref_check
    CHECK ((kind IN ('agent', 'template')) = (agent_ref IS NOT NULL));
