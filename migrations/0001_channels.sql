-- Channels: one row per WhatsApp business number we serve (a tenant may own several).
-- Secrets (app secrets, verify token, access token) are stored encrypted with AES-256-GCM under
-- WAFLEET_ENCRYPTION_KEY; the database never sees them in clear.
CREATE TABLE channels (
    id                   BIGSERIAL PRIMARY KEY,
    -- Meta's id of the business number: what webhooks are routed by and sends are posted to.
    phone_number_id      TEXT NOT NULL UNIQUE,
    waba_id              TEXT,
    display_phone_number TEXT,
    name                 TEXT NOT NULL DEFAULT '',
    -- Every app secret that may sign this number's webhooks (several during a rotation).
    app_secrets          BYTEA[] NOT NULL DEFAULT '{}',
    verify_token         BYTEA,
    access_token         BYTEA,
    enabled              BOOLEAN NOT NULL DEFAULT TRUE,
    bot_mode             TEXT NOT NULL DEFAULT 'on' CHECK (bot_mode IN ('on', 'shadow', 'off')),
    -- When not empty, only these customers (wa_id digits or business-scoped user ids) are served;
    -- everyone else's messages are kept in quarantine. For test numbers and staged roll-outs.
    phone_allowlist      TEXT[] NOT NULL DEFAULT '{}',
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Ingest polls max(updated_at) to notice changes, so every update must move it.
CREATE FUNCTION touch_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER channels_touch BEFORE UPDATE ON channels
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
