-- Whether the model reads the PDFs customers send (fetched from Meta when answering, never
-- stored). Off by default, as images are: a document can hold what redaction cannot remove
-- from text, and not every provider reads PDFs.
ALTER TABLE channels ADD COLUMN documents_to_model BOOLEAN NOT NULL DEFAULT false;
