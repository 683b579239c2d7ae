-- A conversation a human owns goes back to the bot once nothing has happened in it for this
-- long (no customer message, no agent message, no handover): an agent who forgets to release a
-- conversation no longer leaves the customer without answers for good. NULL keeps conversations
-- with humans until an agent releases them.
ALTER TABLE channels ADD COLUMN human_release_after_secs INTEGER DEFAULT 86400
    CHECK (human_release_after_secs IS NULL OR human_release_after_secs > 0);
-- The conversations humans own: few, and read every few seconds (waiting gauges, idle release).
CREATE INDEX conversations_human ON conversations (channel_id) WHERE owner = 'human';
