-- What an erasure leaves of an agent's or a template's reference (the request's idempotency
-- key): the SHA-256 of the customer's number and the key. Without it a template sent to the
-- customer by phone and retried with its key after the erasure found no conversation for the
-- number, started one and went out again; with it the retry is recognised by the number and the
-- key it gives, while the row names neither. One definition for the erasure and for the lookup.
CREATE FUNCTION erased_ref(phone TEXT, ref TEXT) RETURNS TEXT
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT 'erased:' || encode(sha256(convert_to(phone || ':' || ref, 'UTF8')), 'hex') $$;

-- The lookup of a retried request by phone, among the erased parts only.
CREATE INDEX outbound_messages_erased_ref ON outbound_messages (agent_ref)
    WHERE agent_ref LIKE 'erased:%';
