-- What Meta last said of a channel's number and of its business account, from the events
-- stream (`phone_number_quality_update`, `account_update`; the account stage): shown by
-- `wafleetctl channel show` and the channel API, and sampled into the per-channel gauges the
-- alerts watch. Each group keeps the events-stream entry id that set it, so a redelivered or
-- older update (workers may apply two at once) never overwrites a newer one.
ALTER TABLE channels
    ADD COLUMN quality_event        TEXT,
    ADD COLUMN messaging_limit      TEXT,
    ADD COLUMN quality_at           TIMESTAMPTZ,
    ADD COLUMN quality_entry        TEXT,
    ADD COLUMN account_event        TEXT,
    ADD COLUMN account_ban_state    TEXT,
    ADD COLUMN account_restrictions JSONB,
    ADD COLUMN account_violation    TEXT,
    ADD COLUMN account_at           TIMESTAMPTZ,
    ADD COLUMN account_entry        TEXT;
