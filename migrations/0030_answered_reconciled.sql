-- A customer's message whose reply Meta accepted, where the acceptance was learnt from a
-- status's callback (Meta's answer to the send lost), was never marked answered, so
-- wafleet_oldest_unanswered_seconds counted from the oldest of them for good. Mark them answered
-- when their first accepted part was last written, as the status stage now does at once.
UPDATE messages m
   SET answered_at = (SELECT min(o.updated_at) FROM outbound_messages o
                       WHERE o.reply_to = m.id AND o.state = 'accepted')
 WHERE m.action = 'reply' AND m.answered_at IS NULL
   AND EXISTS (SELECT 1 FROM outbound_messages o WHERE o.reply_to = m.id AND o.state = 'accepted');
