-- How long the bot waits after a customer's text before answering it (stages::llm), so that
-- what a customer types in a burst ("hola", "una pregunta", "¿tienen la talla M?") gets one
-- answer written knowing all of it. 0 (the default): answered at once; a text followed by
-- another before its answer is written is still answered with the later one.
ALTER TABLE channels
    ADD COLUMN reply_gather_ms INTEGER NOT NULL DEFAULT 0
        CHECK (reply_gather_ms BETWEEN 0 AND 10000);
