-- Whether a release's event reached the dashboard stream. An idle release is made in Postgres by a
-- worker's sweep and announced after; when Redis refused the event, nothing announced it again
-- and dashboards never learnt the conversation went back to the bot. The sweep now records the
-- release unannounced and marks it once Redis took the event; the next sweep announces what is
-- left. Every event before this one counts as announced.
ALTER TABLE handover_events ADD COLUMN announced BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX handover_events_unannounced ON handover_events (id) WHERE NOT announced;
