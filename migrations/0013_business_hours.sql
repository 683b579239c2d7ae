-- When a channel's people answer. Outside these hours a customer who asks for a person gets the
-- after-hours acknowledgement instead of the usual one (the conversation is still handed over:
-- the team picks it up when it is back).
ALTER TABLE channels
    -- A weekly schedule (`mon-fri 09:00-18:00; sat 10:00-14:00`, see wafleet_core::hours);
    -- NULL: always open.
    ADD COLUMN business_hours TEXT,
    -- The IANA time zone the schedule is written in.
    ADD COLUMN business_hours_tz TEXT NOT NULL DEFAULT 'UTC',
    -- NULL: the usual acknowledgement at any hour; '': none outside the hours.
    ADD COLUMN after_hours_ack TEXT;
