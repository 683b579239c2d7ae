-- Dashboards hear when Meta fails an agent's message or template, or we give up on it: a
-- `message_failed` event on the events stream, published by the sender or the status stage
-- (wafleet::stages::announce_failures). Set once Redis took the event, so a send job run again
-- or a redelivered status does not announce the same failure twice; a part reopened for another
-- send is unannounced again (its next failure is a new one). Parts failed before this migration
-- count as announced (the column's first default), so nothing old is announced late.
ALTER TABLE outbound_messages ADD COLUMN failure_announced BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE outbound_messages ALTER COLUMN failure_announced SET DEFAULT FALSE;
