-- Replies: the LLM stage's answers and the sender's per-channel controls.

ALTER TABLE channels
    -- NULL: the built-in customer-support prompt.
    ADD COLUMN system_prompt TEXT,
    -- Messages of history given to the model (redacted text only).
    ADD COLUMN history_limit INTEGER NOT NULL DEFAULT 20 CHECK (history_limit > 0),
    -- Sent when every provider failed; NULL: the built-in text.
    ADD COLUMN canned_reply TEXT,
    -- Meta's throughput for this number (80/s by default, up to 1000/s after an upgrade).
    ADD COLUMN send_rate_per_sec INTEGER NOT NULL DEFAULT 80 CHECK (send_rate_per_sec > 0),
    -- Messages to one customer allowed back to back before the 1-per-6-s pair rate applies.
    ADD COLUMN pair_burst INTEGER NOT NULL DEFAULT 3 CHECK (pair_burst > 0),
    -- Set when Meta answers with a configuration error (expired token, permissions, locked
    -- account): sends wait instead of burning retries until an operator fixes it.
    ADD COLUMN sends_paused_until TIMESTAMPTZ,
    ADD COLUMN sends_paused_reason TEXT;

-- The model chain of a channel, tried in order; API keys encrypted like every other secret.
CREATE TABLE channel_llm_providers (
    channel_id BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('anthropic', 'openai')),
    base_url   TEXT NOT NULL,
    model      TEXT NOT NULL,
    api_key    BYTEA NOT NULL,
    PRIMARY KEY (channel_id, position)
);

-- One answer per inbound message, whatever happened to it.
CREATE TABLE replies (
    id              BIGSERIAL PRIMARY KEY,
    message_id      BIGINT NOT NULL UNIQUE REFERENCES messages (id),
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    -- produced (parts queued), shadow (stored, never sent), suppressed (a human owns the
    -- conversation), window_closed (24 h passed), handover (the model asked for a human)
    outcome         TEXT NOT NULL,
    provider        TEXT,
    model           TEXT,
    input_tokens    INTEGER,
    output_tokens   INTEGER,
    canned          BOOLEAN NOT NULL DEFAULT FALSE,
    failures        JSONB NOT NULL DEFAULT '[]',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE outbound_messages
    ADD COLUMN attempts    INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN sending_at  TIMESTAMPTZ,
    ADD COLUMN fail_reason TEXT;
