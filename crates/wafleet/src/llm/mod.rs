//! LLM provider clients: one chat-completion call to Anthropic or an OpenAI-compatible server
//! (OpenAI, DeepSeek, …), and the fallback chain that turns a list of providers into a reply the
//! customer always gets.
//!
//! This module owns the HTTP side of talking to models: request shapes per dialect, response
//! parsing, the per-call deadline, retries across providers, the handover marker, and the
//! `wafleet_llm_*` metrics. It does not decide *which* errors are retryable (that is
//! [`wafleet_core::llm_error::classify_llm_error`]) nor the backoff arithmetic
//! ([`wafleet_core::retry::Backoff`]); it does not build conversation history, redact PII or send
//! anything to WhatsApp — callers do that before and after.
//!
//! # Layout
//! - `client`: [`LlmClient`], one pooled `reqwest::Client` and [`LlmClient::complete`].
//! - `wire`: the two JSON dialects, pure functions from [`ChatRequest`] to a body and from a body
//!   to a [`Completion`].
//! - `fallback`: [`reply_with_fallback`] and its [`FallbackPolicy`].
//! - `prompt`: [`default_system_prompt`], and [`system_prompt`] for a channel's own.
//!
//! # Deadlines, not idle timeouts
//! DeepSeek, when busy, holds a non-streaming request open and writes blank lines until it can
//! answer; every blank line would reset an idle-read timer, so a read timeout never fires. Each
//! call is therefore bounded by one deadline over the *whole* call (connect, headers and body), and
//! [`reply_with_fallback`] bounds everything (calls and sleeps) by an overall deadline.
//!
//! # The handover marker
//! The model asks for a human by writing [`HANDOVER_MARKER`] (`[[HANDOVER]]`) anywhere in its answer,
//! optionally followed by a short message for the customer; [`default_system_prompt`] tells it so.
//! [`reply_with_fallback`] sets [`Reply::wants_human`] and removes the marker (and the whitespace
//! around it) from the text, which may leave it empty. The match ignores ASCII case, because models
//! sometimes lower-case it.
//!
//! # Logs and metrics
//! Logs name the provider label, model, status and error class; never the API key (kept in
//! [`Secret`]), the prompt or the customer's text. Metrics, all labelled with the provider's
//! [`ProviderConfig::name`]:
//! - `wafleet_llm_requests_total{provider, outcome}`, outcome one of [`LlmError::outcome`] or `ok`;
//! - `wafleet_llm_request_duration_seconds{provider}`;
//! - `wafleet_llm_tokens_total{provider, kind="input"|"output"}`;
//! - `wafleet_llm_alerts_total{provider, kind="auth"|"quota"}`: an operator must act (bad key,
//!   spend cap reached); retrying cannot help;
//! - `wafleet_llm_fallbacks_total{kind="next_provider"|"canned"}`.

mod client;
mod fallback;
mod prompt;
mod wire;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

pub use client::LlmClient;
pub use fallback::{FallbackPolicy, Reply, reply_with_fallback};
pub use prompt::{default_system_prompt, system_prompt, with_knowledge, with_opening};

/// What the model writes to hand the conversation over to a human. See the module docs.
pub const HANDOVER_MARKER: &str = "[[HANDOVER]]";

/// Who said a turn of the conversation. The system prompt is not a turn: it is
/// [`ChatRequest::system`], because Anthropic takes it outside the message list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of the conversation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Images and documents the customer sent with this turn (only the message being answered
    /// carries them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// The recordings a transcription endpoint takes (OpenAI's list: flac, mp3, mp4, mpeg, mpga,
/// m4a, ogg, wav, webm), as Meta names their media types. WhatsApp's voice notes are
/// `audio/ogg` (opus); `audio/aac` and `audio/amr`, which WhatsApp also carries, are not taken.
pub const AUDIO_TYPES: [&str; 6] = [
    "audio/ogg",
    "audio/mpeg",
    "audio/mp4",
    "audio/wav",
    "audio/webm",
    "audio/flac",
];

/// The file name a recording is uploaded under: transcription endpoints read the format from
/// its extension.
pub fn audio_file_name(mime_type: &str) -> &'static str {
    match mime_type {
        "audio/mpeg" => "audio.mp3",
        "audio/mp4" => "audio.m4a",
        "audio/wav" => "audio.wav",
        "audio/webm" => "audio.webm",
        "audio/flac" => "audio.flac",
        _ => "voice.ogg",
    }
}

/// An image or a PDF for the model, as both dialects take it inline: its media type and its
/// bytes in base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// One of [`Attachment::IMAGE_TYPES`] or [`Attachment::DOCUMENT_TYPES`]: what both
    /// providers read.
    pub media_type: String,
    pub base64: String,
}

impl Attachment {
    /// The image types both providers read.
    pub const IMAGE_TYPES: [&'static str; 4] =
        ["image/jpeg", "image/png", "image/gif", "image/webp"];
    /// The document types both providers read (Anthropic's `document` block, OpenAI's `file`
    /// part).
    pub const DOCUMENT_TYPES: [&'static str; 1] = ["application/pdf"];

    pub fn new(media_type: &str, bytes: &[u8]) -> Self {
        use base64::Engine;
        Self {
            media_type: media_type.to_string(),
            base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// Whether it is a document (else an image).
    pub fn is_document(&self) -> bool {
        Self::DOCUMENT_TYPES.contains(&self.media_type.as_str())
    }
}

/// The media type and size, never the bytes (the customer's photo or file).
impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("media_type", &self.media_type)
            .field("base64_len", &self.base64.len())
            .finish()
    }
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
            attachments: Vec::new(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
            attachments: Vec::new(),
        }
    }
}

/// Prints the length, not the text: a customer's words must not reach logs through `{:?}`.
impl fmt::Debug for ChatMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatMessage")
            .field("role", &self.role)
            .field("content_chars", &self.content.chars().count())
            .field("attachments", &self.attachments)
            .finish()
    }
}

/// A provider-neutral chat request. Each dialect reshapes it (see `wire`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    pub system: String,
    /// Oldest first. Anthropic (and DeepSeek's reasoner) need alternating roles starting with
    /// the user and no empty turn; the client drops, merges and trims as needed, so callers may
    /// pass history as stored.
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
}

/// The wire dialect a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// `POST {base_url}/v1/messages`.
    Anthropic,
    /// `POST {base_url}/chat/completions`: OpenAI, DeepSeek and other compatible servers.
    OpenAiCompatible,
}

impl ProviderKind {
    fn classifier(self) -> wafleet_core::llm_error::Provider {
        match self {
            ProviderKind::Anthropic => wafleet_core::llm_error::Provider::Anthropic,
            ProviderKind::OpenAiCompatible => wafleet_core::llm_error::Provider::OpenAiCompatible,
        }
    }
}

impl FromStr for ProviderKind {
    type Err = String;

    /// Accepts `anthropic`, and `openai`, `openai-compatible` or `deepseek` for the OpenAI dialect,
    /// ignoring case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "anthropic" => Ok(Self::Anthropic),
            "openai" | "openai-compatible" | "openai_compatible" | "deepseek" => {
                Ok(Self::OpenAiCompatible)
            }
            other => Err(format!(
                "unknown LLM provider kind {other:?}; expected anthropic, openai, openai-compatible or deepseek"
            )),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAiCompatible => "openai-compatible",
        })
    }
}

/// One provider endpoint with its model and key. `Debug` is safe to log: the key is a [`Secret`].
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Label for metrics and logs, e.g. `anthropic`, `deepseek`. Keep it low-cardinality.
    pub name: String,
    pub kind: ProviderKind,
    /// `https://api.anthropic.com`, `https://api.openai.com/v1`, `https://api.deepseek.com`, …
    /// A trailing slash is fine; for Anthropic a trailing `/v1` is tolerated too.
    pub base_url: String,
    pub model: String,
    pub api_key: Secret<String>,
}

/// Tokens billed for one call, as the provider reported them (0 when it did not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// A successful call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The model's text, never blank.
    pub text: String,
    pub usage: Usage,
    /// [`ProviderConfig::name`] of the provider that answered.
    pub provider: String,
    /// The model the provider says answered (it may be a dated version of the configured alias),
    /// else the configured one.
    pub model: String,
    /// `end_turn`, `max_tokens` (Anthropic), `stop`, `length` (OpenAI), … as sent.
    pub stop_reason: Option<String>,
}

/// Why a call failed, named by what the caller should do about it.
///
/// Messages carry the HTTP status and the provider's error type and message, never the key or the
/// prompt; for [`LlmError::Auth`] the provider's message is left out, because some echo a masked key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Our request or token rate is over the limit; retry after `retry_after` (or with backoff).
    #[error("rate limited{}", waited(retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// The provider as a whole is overloaded (Anthropic 529, OpenAI 503); retry with backoff.
    #[error("provider overloaded{}", waited(retry_after))]
    Overloaded { retry_after: Option<Duration> },
    /// Server error, broken connection, unreadable answer: worth a bounded number of retries.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The call did not complete within its deadline (possibly while receiving keep-alives).
    #[error("deadline exceeded")]
    Timeout,
    /// The key is wrong, revoked or not allowed: an operator must fix the configuration.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Spend cap, quota or credit exhausted: an operator must pay or raise the limit.
    #[error("quota exhausted: {0}")]
    Quota(String),
    /// The request is wrong as is (bad model, too long, …), or the answer was empty.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// The wait a provider asked for, as an error message says it (" (retry after 3 s)"), or nothing
/// when it asked for none: the message is logged and stored in `replies.failures`, where
/// `Some(3s)` or `None` read as Rust, not as the provider's answer.
fn waited(retry_after: &Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |d| {
        format!(" (retry after {} s)", d.as_secs_f64())
    })
}

impl LlmError {
    /// Whether the same request to the same provider may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Overloaded { .. } | Self::Transient(_) | Self::Timeout
        )
    }

    /// Whether an operator must act (the `wafleet_llm_alerts_total` kinds).
    pub fn needs_operator(&self) -> bool {
        matches!(self, Self::Auth(_) | Self::Quota(_))
    }

    /// The provider's own hint of how long to wait, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Overloaded { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// The `outcome` label of `wafleet_llm_requests_total` for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Overloaded { .. } => "overloaded",
            Self::Transient(_) => "transient",
            Self::Timeout => "timeout",
            Self::Auth(_) => "auth",
            Self::Quota(_) => "quota",
            Self::Permanent(_) => "permanent",
        }
    }
}

/// Splits the handover marker off a model's answer: `(text without marker, wants_human)`.
///
/// Every occurrence is removed (ASCII case ignored) with the whitespace around it; the pieces left
/// on either side are joined by a blank line when the marker stood on a line of its own, else by a
/// space.
pub(crate) fn split_handover(text: &str) -> (String, bool) {
    // ASCII lower-casing keeps byte offsets, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let marker = HANDOVER_MARKER.to_ascii_lowercase();
    if !lower.contains(&marker) {
        return (text.to_owned(), false);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest_start = 0;
    let mut pending_separator: Option<&str> = None;
    let push = |out: &mut String, piece: &str, separator: Option<&str>| {
        let piece = piece.trim();
        if piece.is_empty() {
            return;
        }
        if !out.is_empty() {
            out.push_str(separator.unwrap_or(" "));
        }
        out.push_str(piece);
    };
    for (at, _) in lower.match_indices(&marker) {
        let piece = &text[rest_start..at];
        push(&mut out, piece, pending_separator);
        let after = &text[at + marker.len()..];
        let around_has_newline = piece.trim_end_matches([' ', '\t']).ends_with('\n')
            || after
                .trim_start_matches([' ', '\t'])
                .starts_with(['\n', '\r']);
        pending_separator = Some(if around_has_newline { "\n\n" } else { " " });
        rest_start = at + marker.len();
    }
    push(&mut out, &text[rest_start..], pending_separator);
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_call_says_how_long_the_provider_asked_to_wait_only_when_it_did() {
        let cases = [
            (
                LlmError::Overloaded { retry_after: None },
                "provider overloaded",
            ),
            (LlmError::RateLimited { retry_after: None }, "rate limited"),
            (
                LlmError::RateLimited {
                    retry_after: Some(Duration::from_secs(3)),
                },
                "rate limited (retry after 3 s)",
            ),
            (
                LlmError::Overloaded {
                    retry_after: Some(Duration::from_millis(1500)),
                },
                "provider overloaded (retry after 1.5 s)",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn provider_kind_parses_every_documented_spelling() {
        let cases = [
            ("anthropic", Ok(ProviderKind::Anthropic)),
            (" Anthropic ", Ok(ProviderKind::Anthropic)),
            ("openai", Ok(ProviderKind::OpenAiCompatible)),
            ("openai-compatible", Ok(ProviderKind::OpenAiCompatible)),
            ("DeepSeek", Ok(ProviderKind::OpenAiCompatible)),
        ];
        for (raw, expected) in cases {
            assert_eq!(raw.parse::<ProviderKind>(), expected, "{raw}");
        }
        let err = "gemini".parse::<ProviderKind>().unwrap_err();
        assert!(err.contains("gemini") && err.contains("anthropic"), "{err}");
    }

    #[test]
    fn handover_marker_is_found_anywhere_and_stripped_with_its_whitespace() {
        let cases = [
            ("Our hours are 9 to 5.", "Our hours are 9 to 5.", false),
            ("[[HANDOVER]]", "", true),
            ("  [[HANDOVER]]\n", "", true),
            (
                "[[HANDOVER]] Te paso con una persona.",
                "Te paso con una persona.",
                true,
            ),
            (
                "Let me get a colleague.\n\n[[HANDOVER]]",
                "Let me get a colleague.",
                true,
            ),
            ("One moment [[handover]] please", "One moment please", true),
            ("A\n[[HANDOVER]]\nB", "A\n\nB", true),
            ("[[HANDOVER]][[HANDOVER]] ok", "ok", true),
            ("[[HANDOVER", "[[HANDOVER", false),
        ];
        for (input, text, wants_human) in cases {
            assert_eq!(
                split_handover(input),
                (text.to_owned(), wants_human),
                "{input:?}"
            );
        }
    }

    #[test]
    fn errors_say_whether_to_retry_and_whom_to_alert() {
        let retryable = [
            LlmError::RateLimited { retry_after: None },
            LlmError::Overloaded { retry_after: None },
            LlmError::Transient("x".into()),
            LlmError::Timeout,
        ];
        for e in &retryable {
            assert!(e.is_retryable() && !e.needs_operator(), "{e:?}");
        }
        for e in [LlmError::Auth("x".into()), LlmError::Quota("x".into())] {
            assert!(!e.is_retryable() && e.needs_operator(), "{e:?}");
        }
        assert!(!LlmError::Permanent("x".into()).is_retryable());
    }

    #[test]
    fn debug_of_messages_and_configs_leaks_neither_text_nor_key() {
        let message = ChatMessage::user("my card is 4111 1111 1111 1111");
        let printed = format!("{message:?}");
        assert!(!printed.contains("4111"), "{printed}");
        let config = ProviderConfig {
            name: "anthropic".into(),
            kind: ProviderKind::Anthropic,
            base_url: "https://api.anthropic.com".into(),
            model: "claude".into(),
            api_key: Secret::new("sk-ant-very-secret".into()),
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("very-secret"), "{printed}");
    }
}
