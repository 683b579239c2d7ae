-- Conversations set aside because the customer's number passed to someone else (see
-- store::conversations::follow_identity_change): a customer changed to a number a former holder
-- used with us, and the former holder's conversation must no longer be found by it. The
-- conversation stays (history, usage), keyed `moved:<id>`, without the number or business-scoped
-- id; `identifiers` keeps what it was known by, only so that erasing its customer by them still
-- finds it (the erasure empties it). `announced` says whether the `number_moved` event reached
-- the dashboard stream, so one Redis refused is announced by a later sweep.
CREATE TABLE number_moves (
    conversation_id BIGINT PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    moved_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    identifiers     TEXT[] NOT NULL,
    announced       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX number_moves_identifiers ON number_moves USING GIN (identifiers);
CREATE INDEX number_moves_unannounced ON number_moves (conversation_id) WHERE NOT announced;
