-- Whether the voice notes and audio files customers send are transcribed (by the workers'
-- transcription provider, WAFLEET_TRANSCRIBE_*) and answered like text. Off by default: the
-- recording goes to a third party, so a business turns it on knowingly. The transcript is
-- redacted and stored as the message's text; the recording is never stored.
ALTER TABLE channels ADD COLUMN transcribe_audio BOOLEAN NOT NULL DEFAULT false;
