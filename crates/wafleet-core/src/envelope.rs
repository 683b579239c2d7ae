//! Job envelopes.
