-- The Graph error code a channel's sends are paused for (see the sender): what `wafleetctl
-- channel list` and the API show, and what decides whether a new access token lifts the pause
-- (190, 0: yes; a locked account or a missing permission: no). NULL with a pause: one of our own
-- (no access token, or one that does not decrypt), which a new token lifts.
ALTER TABLE channels ADD COLUMN sends_paused_code INTEGER;

-- Pauses recorded before: their code is in the reason ("Graph configuration error 190: …").
UPDATE channels
   SET sends_paused_code = substring(sends_paused_reason FROM '^Graph configuration error ([0-9]+)')::int
 WHERE sends_paused_reason ~ '^Graph configuration error [0-9]+';
