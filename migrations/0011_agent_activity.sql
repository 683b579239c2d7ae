-- When an agent last acted in the conversation (took it, wrote a message or a template). An
-- update of the conversation's own row, so the idle release, which re-checks a row another
-- transaction changed, never gives back a conversation an agent was writing in at that moment.
ALTER TABLE conversations ADD COLUMN agent_activity_at TIMESTAMPTZ;
