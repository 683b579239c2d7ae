-- The Meta app whose webhooks carry this number (its App ID, digits). Ingest serves a path per
-- app, /webhooks/whatsapp/{app_id}, that checks a POST against that app's secrets only: on the
-- shared path every POST is checked against every distinct app secret, which costs one pass of
-- HMAC-SHA256 over the body per app a platform hosts. NULL: the number is served on the shared
-- path only.
ALTER TABLE channels ADD COLUMN app_id TEXT;
