-- The model's history is the last turns of one session of one conversation
-- (store::replies::reply_contexts). The indexes it had reached every earlier message and reply of
-- the conversation and dropped the other sessions row by row, so for a returning customer each
-- reply read their whole past: cost grew with every session they ever had. Both sides of the
-- history are now indexed by session.

-- An outbound message's session is the session of the customer message it answers.
ALTER TABLE outbound_messages ADD COLUMN session_no INT;
UPDATE outbound_messages o SET session_no = m.session_no FROM messages m WHERE m.id = o.reply_to;

CREATE INDEX messages_session ON messages (conversation_id, session_no, id);
DROP INDEX messages_conversation;
CREATE INDEX outbound_messages_session ON outbound_messages (conversation_id, session_no, reply_to);
DROP INDEX outbound_messages_conversation;
