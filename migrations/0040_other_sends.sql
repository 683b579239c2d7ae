-- A part can reach Meta more than once: an ambiguous send (no answer) taken as lost and sent
-- again, or a send a `failed` status reopened. `other_wamids`: the wamids of the part's sends
-- other than the one `wamid` names, as erased_wamid digests (they identify the message and
-- encode no number, so an erasure has nothing to do here): the failed message a reopen forgot,
-- and a send Meta took that a late status named after the part held another (the customer has
-- two copies). A status of one of them is known, counted, and never taken for the part's own;
-- a late status of an earlier send Meta took while the part holds no send Meta took makes that
-- send the part's (wafleet::store::conversations::apply_statuses).
ALTER TABLE outbound_messages ADD COLUMN other_wamids TEXT[] NOT NULL DEFAULT '{}';

-- An agent's part dashboards heard of as failed `unanswered` (no answer nor status came for its
-- sends) that a late `failed` status then fails with Meta's code: its `message_failed` event is
-- announced again, once, with `refines` naming the reason it refines (wafleet::stages::
-- announce_failures). Set when the status is applied, cleared when the part is reopened.
ALTER TABLE outbound_messages ADD COLUMN failure_refines TEXT;
