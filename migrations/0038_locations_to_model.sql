-- Whether the model reads the locations customers share (a pin, or a place picked from the map)
-- as a turn. Off by default: a customer's own pin is where they are, personal data that goes to
-- the model's provider when this is on.
ALTER TABLE channels ADD COLUMN locations_to_model BOOLEAN NOT NULL DEFAULT false;

-- How a location message reads, in the model's history and in the agents' transcript, from its
-- stored metadata: `[location: Tienda Centro, [ADDRESS], CDMX (19.4326, -99.1332)]`. The name and
-- address are as stored, redacted as typed text is; the coordinates rounded to 4 decimals (about
-- 11 m: a street corner, enough to pick the nearest shop or a delivery zone; more says which
-- house). A bare pin is `[location: (19.4326, -99.1332)]`; an erased one (metadata '{}')
-- `[location]`. Coordinates that are not numbers are left out rather than failing the query.
CREATE FUNCTION location_text(meta jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '[location'
        || coalesce(': ' || nullif(concat_ws(' ',
               nullif(concat_ws(', ', nullif(meta->>'name', ''), nullif(meta->>'address', '')), ''),
               CASE WHEN jsonb_typeof(meta->'latitude') = 'number'
                         AND jsonb_typeof(meta->'longitude') = 'number'
                    THEN '(' || round((meta->>'latitude')::numeric, 4) || ', '
                             || round((meta->>'longitude')::numeric, 4) || ')' END), ''), '')
        || ']'
$$;
