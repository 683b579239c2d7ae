-- Bearer tokens of the agent API (`wafleet-api`), one per dashboard or team. Only a SHA-256 of
-- each token is kept: the token itself is shown once, when `wafleetctl api-token add` makes it.
CREATE TABLE api_tokens (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    token_sha256     BYTEA NOT NULL UNIQUE,
    -- The business numbers (phone_number_id) the token reaches; empty: every number.
    phone_number_ids TEXT[] NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at       TIMESTAMPTZ
);
