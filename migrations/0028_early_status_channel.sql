-- The business number a status came for, so an early status (one that arrived before the
-- sender recorded its wamid) is applied only to that number's message: a status in one
-- tenant's webhook, which its own app signs, must never fail or pause another number's.
-- 0: not known (rows from before this migration, statuses applied directly); matches any.
ALTER TABLE early_statuses ADD COLUMN channel_id BIGINT NOT NULL DEFAULT 0;
ALTER TABLE early_statuses DROP CONSTRAINT early_statuses_pkey;
ALTER TABLE early_statuses ADD PRIMARY KEY (wamid, status, channel_id);
