-- no-transaction
-- The locations customers shared, by conversation: with a channel's `locations_to_model` off
-- (the default), the model's history leaves out the bot's answers to locations
-- (store::replies::reply_contexts), which asks, for each of the bot's answers in the history,
-- whether it answered a location. Over the messages index that question read the
-- conversation's messages for every answer (ten histories of 300-message sessions: 16.5-17.0 ms,
-- against 4.9-5.3 before answers to locations were left out); over this index, which holds
-- locations only, it costs a probe of a near-empty index per answer (6.5-6.6 ms).
-- Built CONCURRENTLY (hence `no-transaction`, and one statement): writes to `messages` go on
-- while a large table is indexed. A build that failed leaves an invalid index, which
-- `DROP INDEX CONCURRENTLY messages_locations` removes before the migrations run again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_locations ON messages (conversation_id, id)
    WHERE message_type = 'location' AND action = 'reply';
