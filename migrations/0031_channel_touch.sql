-- Workers keep a channel's settings while its updated_at stays the same (they look at every
-- channel's updated_at, not at its rows, when their entry is 2 s old): a change to its model
-- chain, or a first or last knowledge entry (whether it has a knowledge base), must move it too,
-- whoever makes it (wafleetctl, the API, a key rotation, a hand edit).
CREATE FUNCTION touch_channel() RETURNS trigger AS $$
BEGIN
    UPDATE channels SET updated_at = clock_timestamp()
     WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.channel_id ELSE NEW.channel_id END;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER channel_llm_providers_touch_channel
    AFTER INSERT OR UPDATE OR DELETE ON channel_llm_providers
    FOR EACH ROW EXECUTE FUNCTION touch_channel();

-- Only an added or removed entry can change whether the channel has any (a replaced one cannot).
CREATE TRIGGER knowledge_entries_touch_channel
    AFTER INSERT OR DELETE ON knowledge_entries
    FOR EACH ROW EXECUTE FUNCTION touch_channel();
