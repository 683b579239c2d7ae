-- Conversations, messages, handovers and outbound delivery state.
-- Message text is only ever stored redacted (see wafleet_core::pii).

ALTER TABLE channels
    -- Idle time after which a customer's next message starts a new session.
    ADD COLUMN session_timeout_secs INTEGER NOT NULL DEFAULT 86400 CHECK (session_timeout_secs > 0),
    -- Phrases that hand a conversation to a human; NULL means the built-in es/en/pt list.
    ADD COLUMN handover_keywords TEXT[],
    -- Sent when a conversation is handed over; NULL means the built-in text, '' means none.
    ADD COLUMN handover_ack TEXT,
    -- Sent in reply to media/location/contacts without text; NULL or '' means none.
    ADD COLUMN media_notice TEXT;

CREATE TABLE conversations (
    id                       BIGSERIAL PRIMARY KEY,
    channel_id               BIGINT NOT NULL REFERENCES channels (id),
    -- The customer part of the conversation key: wa_id when Meta sends it, else the BSUID.
    customer_key             TEXT NOT NULL,
    wa_id                    TEXT,
    user_id                  TEXT,
    profile_name             TEXT,
    session_no               INTEGER NOT NULL DEFAULT 1,
    session_started_at       TIMESTAMPTZ NOT NULL,
    -- Who answers: the bot, or a human who took over (until released).
    owner                    TEXT NOT NULL DEFAULT 'bot' CHECK (owner IN ('bot', 'human')),
    handed_over_at           TIMESTAMPTZ,
    -- By the messages' own timestamps: the 24-hour window closes 24 h after this.
    last_customer_message_at TIMESTAMPTZ,
    last_activity_at         TIMESTAMPTZ NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (channel_id, customer_key)
);
CREATE INDEX conversations_user_id ON conversations (channel_id, user_id) WHERE user_id IS NOT NULL;
CREATE TRIGGER conversations_touch BEFORE UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE messages (
    id               BIGSERIAL PRIMARY KEY,
    conversation_id  BIGINT NOT NULL REFERENCES conversations (id),
    channel_id       BIGINT NOT NULL REFERENCES channels (id),
    session_no       INTEGER NOT NULL,
    wamid            TEXT NOT NULL,
    message_type     TEXT NOT NULL,
    text_redacted    TEXT,
    pii_types        TEXT[] NOT NULL DEFAULT '{}',
    -- Type-specific facts (media id and mime type, coordinates, counts…), redacted.
    metadata         JSONB NOT NULL DEFAULT '{}',
    context_wamid    TEXT,
    -- Meta's timestamp (when the customer sent it) and when we stored it.
    sent_at          TIMESTAMPTZ,
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Stream entry the message came from: its order is the arrival order.
    source_entry     TEXT,
    -- Who owned the conversation when it arrived.
    owner_at_arrival TEXT NOT NULL,
    -- What the stage decided: reply, notice, handover, none; and whether its follow-up jobs
    -- (reply job, outbound ack, dashboard event) were handed to Redis.
    action           TEXT NOT NULL,
    followup_done    BOOLEAN NOT NULL DEFAULT FALSE,
    answered_at      TIMESTAMPTZ,
    UNIQUE (channel_id, wamid)
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
CREATE INDEX messages_unanswered ON messages (channel_id, received_at)
    WHERE action = 'reply' AND answered_at IS NULL;

CREATE TABLE handover_events (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    kind            TEXT NOT NULL CHECK (kind IN ('handover', 'release')),
    -- keyword, model, re_engagement, agent
    reason          TEXT NOT NULL,
    keyword         TEXT,
    message_id      BIGINT REFERENCES messages (id),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX handover_events_conversation ON handover_events (conversation_id, id);

-- Every part we send (or decide not to), before it is sent.
CREATE TABLE outbound_messages (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    channel_id      BIGINT NOT NULL REFERENCES channels (id),
    -- The inbound message this answers, and which part of the answer it is.
    reply_to        BIGINT REFERENCES messages (id),
    part_no         INTEGER NOT NULL DEFAULT 0,
    kind            TEXT NOT NULL CHECK (kind IN ('reply', 'handover_ack', 'notice')),
    body            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'accepted', 'failed', 'suppressed', 'shadow')),
    wamid           TEXT UNIQUE,
    -- Delivery as Meta reports it; only moves forward (see delivery_rank).
    delivery        TEXT CHECK (delivery IN ('sent', 'delivered', 'read', 'failed')),
    delivery_rank   SMALLINT NOT NULL DEFAULT 0,
    delivery_at     TIMESTAMPTZ,
    error_code      INTEGER,
    error_title     TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (reply_to, kind, part_no)
);
CREATE TRIGGER outbound_touch BEFORE UPDATE ON outbound_messages
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Statuses that arrived before we recorded the wamid they refer to; applied when it appears.
CREATE TABLE early_statuses (
    wamid       TEXT NOT NULL,
    status      TEXT NOT NULL,
    rank        SMALLINT NOT NULL,
    status_at   TIMESTAMPTZ,
    error_code  INTEGER,
    error_title TEXT,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (wamid, status)
);
