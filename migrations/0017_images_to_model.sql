-- Whether the model sees the images customers send (fetched from Meta when answering, never
-- stored). Off by default: a photo can show what redaction cannot remove from text (a card, an
-- ID), so a business turns it on knowingly.
ALTER TABLE channels ADD COLUMN images_to_model BOOLEAN NOT NULL DEFAULT false;
