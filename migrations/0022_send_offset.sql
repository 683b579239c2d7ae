-- The sends of a part before an operator's replay gave it a fresh round of attempts. A send is
-- numbered send_offset + attempts in its biz_opaque_callback_data, so numbers never repeat across
-- a replay: a late status of a send made before it is never taken for a send made after it (that
-- status would have failed, or accepted under the old wamid, the send in flight).
ALTER TABLE outbound_messages ADD COLUMN send_offset INT NOT NULL DEFAULT 0;
