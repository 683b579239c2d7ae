//! # wafleet-core
//!
//! The logic of wafleet that needs no network, no clock and no randomness of its own: everything
//! here is a pure function of its arguments, so it is tested exactly and fuzzed freely. It must
//! never depend on tokio, redis, sqlx or reqwest; the adapters in the `wafleet` crate bring I/O.
//!
//! # Layout
//! - [`signature`]: `X-Hub-Signature-256` verification over the raw body, constant time.
//! - [`webhook`]: parsing Meta's webhook envelope into one [`envelope::Update`] per update.
//! - [`envelope`]: the jobs that travel on the Redis Streams between ingest and the workers.
//! - [`account`]: what Meta says of a business's numbers, account and templates (quality,
//!   restrictions, template statuses), read tolerantly from the events stream's changes.
//! - [`pii`]: redaction of personal data into typed placeholders.
//! - [`format`](mod@format): Markdown → WhatsApp formatting and splitting replies into ≤ 4096-char parts.
//! - [`outgoing`]: what an agent sends besides text (a file, reply buttons, a list): Meta's
//!   limits checked, the Graph API's message object, the transcript's line.
//! - [`handover`]: accent- and case-insensitive whole-word detection of "I want a human" (es/en/pt).
//! - [`phone`]: the notations of one phone number (Mexico's and Brazil's rewritten mobiles).
//! - [`hours`]: business hours as a weekly schedule (`mon-fri 09:00-18:00; sat 10:00-14:00`).
//! - [`retry`]: backoff and retry limits as data; jitter and age come in as arguments.
//! - [`graph_error`]: Graph API errors parsed and classified on `error.code` (throttle, transient, …).
//! - [`llm_error`]: LLM provider failures classified (rate limit, overload, quota, auth, …).

pub mod account;
pub mod envelope;
pub mod format;
pub mod graph_error;
pub mod handover;
pub mod hours;
pub mod llm_error;
pub mod outgoing;
pub mod phone;
pub mod pii;
pub mod retry;
pub mod signature;
pub mod webhook;

/// A JSON decoding error told without the input it may quote: what went wrong and where.
///
/// serde's own message quotes the offending value (`invalid type: string "…"`), which in a
/// webhook, a job or a model's answer can be message text or a name. Anything that may reach a
/// log uses this instead; the input itself stays where it is kept (a dead letter, a job).
pub fn json_error_without_input(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "invalid JSON",
        Category::Data => "unexpected shape",
        Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}
