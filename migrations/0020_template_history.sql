-- A business's template that the bot answers after (`answered_by: bot`) is part of what the model
-- reads: the customer's "sí, el martes" means nothing without the order update it answers.
-- history_text is that part as the model sees it, redacted: set when the template is recorded
-- while the bot owns the conversation, NULL for every other part (a reply's history is its body).
ALTER TABLE outbound_messages ADD COLUMN history_text TEXT;
