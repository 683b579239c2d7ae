-- A channel's knowledge base: entries (a question and its answer, a policy, a product) the LLM
-- stage finds by full-text search for each customer message and gives the model with its
-- instructions (`wafleetctl knowledge add|list|remove`).
CREATE TABLE knowledge_entries (
    id         BIGSERIAL PRIMARY KEY,
    channel_id BIGINT NOT NULL REFERENCES channels (id),
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    -- The text search configuration the entry is written in (spanish, english, portuguese,
    -- simple…): how its words are stemmed, and how a customer's message is read against it.
    language   REGCONFIG NOT NULL,
    -- Title words weigh more than body words.
    tsv        TSVECTOR NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (channel_id, title)
);
