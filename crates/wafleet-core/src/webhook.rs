//! Webhook parsing.
