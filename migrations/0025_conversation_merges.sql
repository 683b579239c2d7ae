-- The conversations a customer's number change merged into another (see
-- store::conversations::follow_identity_change): the merged one is deleted, and an agent, a
-- dashboard or wafleetctl holding its id must learn where it went. `into_id` is the surviving
-- conversation (moved on when the survivor is itself merged later); `announced` says whether the
-- `merged` event reached the dashboard stream, so one Redis refused is announced by a later sweep.
-- Ids only: no phone number is kept here.
CREATE TABLE conversation_merges (
    merged_id  BIGINT PRIMARY KEY,
    into_id    BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    merged_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    announced  BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX conversation_merges_into ON conversation_merges (into_id);
CREATE INDEX conversation_merges_unannounced ON conversation_merges (merged_id) WHERE NOT announced;
