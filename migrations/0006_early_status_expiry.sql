-- Statuses for a wamid we never recorded (mostly messages other apps sent from the same number)
-- are deleted after WAFLEET_EARLY_STATUS_TTL_SECS (stages::status::expire_early_statuses).
CREATE INDEX early_statuses_received_at ON early_statuses (received_at);
