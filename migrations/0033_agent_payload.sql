-- An agent's message that is not plain text (a file by link or media id, reply buttons, a list
-- to pick from): the Graph API's message fields the sender sends (`{"type": "image", "image":
-- {...}}`, `{"type": "interactive", "interactive": {...}}`, wafleet_core::outgoing), recorded with
-- the part before any send, as a template's object is in `body`. `body` holds the line the
-- transcript shows (`[image] caption`, `¿Confirmas? [buttons: Sí | No]`). NULL for every other
-- part. Emptied with the body when the customer is erased.
ALTER TABLE outbound_messages ADD COLUMN payload JSONB;
