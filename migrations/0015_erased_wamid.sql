-- What an erasure leaves of a wamid (Meta's wamids encode the customer's number): its SHA-256,
-- still distinct per message. One definition for the erasure and for the statuses and sends that
-- arrive after it, which must find the same value.
CREATE FUNCTION erased_wamid(wamid TEXT) RETURNS TEXT
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT 'erased:' || encode(sha256(convert_to(wamid, 'UTF8')), 'hex') $$;
