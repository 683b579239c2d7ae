-- The LLM stage reads a conversation's earlier replies for the model's history
-- (store::replies::history). Without this index that read scanned every outbound message of
-- every conversation, so each reply cost more than the one before.
CREATE INDEX outbound_messages_conversation ON outbound_messages (conversation_id, reply_to);
