-- Admin tokens of the API: they manage channels (add a business number, change its secrets,
-- settings, models and knowledge base), which agents' tokens cannot. An admin token reaches
-- every number: a platform's own console, not one business's.
ALTER TABLE api_tokens
    ADD COLUMN admin BOOLEAN NOT NULL DEFAULT false,
    ADD CONSTRAINT api_tokens_admin_reaches_every_number
        CHECK (NOT admin OR phone_number_ids = '{}');
