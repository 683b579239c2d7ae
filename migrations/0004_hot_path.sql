-- Changes for the per-message hot path: an index the history read needs, room for in-place
-- updates, and a flag that no longer earns its write.

-- The LLM stage reads a conversation's earlier replies for the model's history
-- (store::replies::reply_contexts). Without this index that read scanned every outbound message of
-- every conversation, so each reply cost more than the one before.
CREATE INDEX outbound_messages_conversation ON outbound_messages (conversation_id, reply_to);

-- Rows that are updated in place several times each (a conversation on every message; an
-- outbound message when claimed, accepted, sent, delivered and read; a message when answered)
-- leave room on their page, so an update that touches no indexed column stays on the page
-- (a HOT update: no new index entries, less bloat, cheaper reads).
ALTER TABLE conversations SET (fillfactor = 70);
ALTER TABLE outbound_messages SET (fillfactor = 70);
ALTER TABLE messages SET (fillfactor = 80);

-- A redelivered message now always redoes its follow-ups (they are idempotent downstream), so
-- the flag that saved that work cost a write per message for a rare case.
ALTER TABLE messages DROP COLUMN followup_done;
