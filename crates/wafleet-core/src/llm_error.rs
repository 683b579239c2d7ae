//! Classification of failed LLM provider calls (Anthropic Messages, OpenAI-compatible chat
//! completions such as OpenAI and DeepSeek) into what the worker should do next.
//!
//! The HTTP status alone is not enough: a 429 is either "slow down" (retry after `retry-after`) or
//! "the monthly spend cap is reached" (do not retry until someone pays), and only the body tells them
//! apart. This module reads status, `retry-after` and body; it never performs the request, sleeps or
//! decides how many times to retry (that is [`crate::retry`]).
//!
//! It also words a failure for the logs ([`describe_llm_error`]): the error's `type` and `code`
//! and a fixed reading of its message ([`ErrorReading`]), never the message itself, which can
//! echo the request (the customer's messages, the system prompt) quoted or not.

use std::time::Duration;

use serde_json::Value;

/// The wire dialect of the provider, which decides where the body hides the error's cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// `POST /v1/messages`; errors `{"type":"error","error":{"type","message","details"?}}`.
    Anthropic,
    /// OpenAI, DeepSeek and other `/chat/completions` servers; errors `{"error":{"message","type","code"}}`.
    OpenAiCompatible,
}

/// What the worker should do with an LLM call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LlmErrorClass {
    /// Our own rate limit (requests or tokens per minute): retry after `retry_after` if given, else
    /// with backoff.
    RateLimited { retry_after: Option<Duration> },
    /// The provider as a whole is overloaded (Anthropic 529, OpenAI 503): retry with backoff and
    /// jitter, honouring `retry_after` when present.
    Overloaded { retry_after: Option<Duration> },
    /// A server error or conflict worth a bounded number of retries.
    Transient,
    /// The key is wrong, revoked or lacks permission (or the region is refused): alert, stop.
    Auth,
    /// Out of money: spend cap, insufficient quota or credit, billing problem. Retrying cannot help
    /// until an operator acts; switching to a fallback provider can.
    Quota,
    /// The request itself is wrong (bad parameters, unknown model, too large): do not retry as is.
    Permanent,
}

impl LlmErrorClass {
    /// Whether the same request may succeed later without anyone changing anything.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Overloaded { .. } | Self::Transient
        )
    }

    /// The provider's own hint of how long to wait, when it gave one.
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Overloaded { retry_after } => retry_after,
            _ => None,
        }
    }
}

/// OpenAI-compatible `error.type` / `error.code` values that mean "out of money", not "too fast".
const OPENAI_QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "credit_balance_exhausted",
    "project_spend_limit_exceeded",
    "billing_hard_limit_reached",
    "insufficient_balance",
];

/// Classifies a failed LLM call from its HTTP status, `retry-after` header and body.
///
/// Anthropic: 429 with `error.details.error_code == "enforced_spend_limit_reached"` → Quota, other
/// 429 → RateLimited; 529 → Overloaded; 500, 502–504 and 409 → Transient; 401/403 → Auth; 402 → Quota;
/// 400 whose message speaks of the credit balance or usage/spend limits → Quota, other 400, 404, 413
/// → Permanent. OpenAI-compatible: 429 whose `error.type` or `error.code` is a quota code (see
/// `insufficient_quota`, `credit_balance_exhausted`, `project_spend_limit_exceeded`) → Quota, other
/// 429 → RateLimited; 503 → Overloaded; 500/502/504/408/409 → Transient; 401/403 → Auth; 402 → Quota;
/// 400/404/413/422 → Permanent.
///
/// Any other status is classified by the body's error type when it names one (useful for errors that
/// arrive inside an HTTP 200 stream), else 5xx → Transient and everything else → Permanent.
pub fn classify_llm_error(
    provider: Provider,
    status: u16,
    retry_after_header: Option<&str>,
    body: &[u8],
) -> LlmErrorClass {
    use LlmErrorClass::*;
    let retry_after = retry_after_header.and_then(parse_retry_after);
    let error = ErrorBody::parse(body);
    let by_status = match provider {
        Provider::Anthropic => match status {
            429 if error.details_code.as_deref() == Some("enforced_spend_limit_reached") => {
                Some(Quota)
            }
            429 => Some(RateLimited { retry_after }),
            529 => Some(Overloaded { retry_after }),
            500 | 502..=504 | 409 => Some(Transient),
            401 | 403 => Some(Auth),
            402 => Some(Quota),
            400 if error.mentions_spend_limit() => Some(Quota),
            400 | 404 | 413 => Some(Permanent),
            _ => None,
        },
        Provider::OpenAiCompatible => match status {
            429 if error.is_openai_quota() => Some(Quota),
            429 => Some(RateLimited { retry_after }),
            503 => Some(Overloaded { retry_after }),
            500 | 502 | 504 | 408 | 409 => Some(Transient),
            401 | 403 => Some(Auth),
            402 => Some(Quota),
            // OpenAI reports a reached hard billing limit as 400 `billing_hard_limit_reached`.
            400 if error.is_openai_quota() => Some(Quota),
            400 | 404 | 413 | 422 => Some(Permanent),
            _ => None,
        },
    };
    by_status
        .or_else(|| error.class_by_type(retry_after))
        .unwrap_or(if (500..600).contains(&status) {
            Transient
        } else {
            Permanent
        })
}

/// The few fields of a provider error body that decide the class.
#[derive(Debug, Default)]
struct ErrorBody {
    kind: Option<String>,
    code: Option<String>,
    details_code: Option<String>,
    message: Option<String>,
}

impl ErrorBody {
    fn parse(body: &[u8]) -> Self {
        let Ok(root) = serde_json::from_slice::<Value>(strip_leading_keepalive(body)) else {
            return Self::default();
        };
        let Some(error) = root.get("error") else {
            return Self::default();
        };
        let text = |pointer: &str| match error.pointer(pointer) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Self {
            kind: text("/type"),
            code: text("/code"),
            details_code: text("/details/error_code"),
            message: text("/message"),
        }
    }

    fn is_openai_quota(&self) -> bool {
        [&self.kind, &self.code]
            .into_iter()
            .flatten()
            .any(|value| OPENAI_QUOTA_CODES.contains(&value.as_str()))
    }

    /// Anthropic reports an exhausted prepaid balance and self-set workspace limits as HTTP 400
    /// `invalid_request_error`; only the message says so.
    fn mentions_spend_limit(&self) -> bool {
        let Some(message) = &self.message else {
            return false;
        };
        let message = message.to_lowercase();
        ["credit balance", "spend limit", "usage limit"]
            .iter()
            .any(|phrase| message.contains(phrase))
    }

    fn class_by_type(&self, retry_after: Option<Duration>) -> Option<LlmErrorClass> {
        use LlmErrorClass::*;
        if self.is_openai_quota()
            || self.details_code.as_deref() == Some("enforced_spend_limit_reached")
        {
            return Some(Quota);
        }
        Some(match self.kind.as_deref()? {
            "rate_limit_error" | "rate_limit_exceeded" | "requests" | "tokens" => {
                RateLimited { retry_after }
            }
            "overloaded_error" => Overloaded { retry_after },
            "api_error" | "server_error" | "conflict_error" | "timeout_error" => Transient,
            "authentication_error" | "permission_error" => Auth,
            "billing_error" => Quota,
            "invalid_request_error" | "not_found_error" | "request_too_large" => Permanent,
            _ => return None,
        })
    }
}

/// Parses a `retry-after` header value given in seconds, integer (`"30"`) or fractional (`"1.5"`).
///
/// The HTTP-date form (`"Wed, 21 Oct 2015 07:28:00 GMT"`) is deliberately not supported and yields
/// `None`: turning it into a delay needs the current time, which this crate does not read, and
/// neither Anthropic nor OpenAI send it. Negative, non-finite and absurdly large values are `None` too.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let secs: f64 = value.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// Skips what a queued OpenAI-compatible server sends before the real body: DeepSeek holds the
/// connection open and writes blank lines (or SSE `: keep-alive` comment lines) until it can answer.
///
/// Removes leading ASCII whitespace, a UTF-8 byte order mark, and whole lines starting with `:`
/// (a JSON document never starts with a colon, so nothing real is lost).
pub fn strip_leading_keepalive(body: &[u8]) -> &[u8] {
    let mut rest = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    loop {
        rest = rest.trim_ascii_start();
        if rest.first() != Some(&b':') {
            return rest;
        }
        rest = match memchr::memchr(b'\n', rest) {
            Some(newline) => &rest[newline + 1..],
            None => &[],
        };
    }
}

/// What a provider's error says, read from its `type`, `code` and message against the phrases
/// providers use; the message itself is never kept. A fixed set of readings, so a log line can
/// tell "model not found" from "context too long" from "invalid key" without quoting a word of
/// the message: proxies (LiteLLM's `Received Messages=[…]`) and OpenAI-compatible servers echo
/// what they were given, quoted or not, the customer's messages and the system prompt included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorReading {
    ModelNotFound,
    ContextTooLong,
    /// The output limit we asked for is above the model's (`max_tokens`).
    MaxTokensTooHigh,
    InvalidKey,
    NoPermission,
    OutOfCredit,
    RateLimited,
    Overloaded,
    ContentRefused,
    /// The request's shape (roles, content blocks, parameters) was refused.
    BadRequest,
    TooLarge,
    Timeout,
    ServerError,
    /// None of the above: the message is left out, only its length is told.
    Unrecognised,
}

impl ErrorReading {
    pub fn label(self) -> &'static str {
        match self {
            Self::ModelNotFound => "model not found",
            Self::ContextTooLong => "context too long",
            Self::MaxTokensTooHigh => "max_tokens above the model's limit",
            Self::InvalidKey => "invalid key",
            Self::NoPermission => "no permission",
            Self::OutOfCredit => "out of credit",
            Self::RateLimited => "rate limited",
            Self::Overloaded => "overloaded",
            Self::ContentRefused => "refused by a content policy",
            Self::BadRequest => "request refused as malformed",
            Self::TooLarge => "request too large",
            Self::Timeout => "timed out upstream",
            Self::ServerError => "server error",
            Self::Unrecognised => "message not recognised",
        }
    }
}

/// How far into a message its reading looks: providers say what went wrong first, and what a
/// proxy echoes of the request (which could hold any phrase below) follows.
const READ_CHARS: usize = 240;

/// `type` / `code` values (lowercase) and what they say. Checked before the message.
const READINGS_BY_CODE: &[(&str, ErrorReading)] = &[
    ("model_not_found", ErrorReading::ModelNotFound),
    ("not_found_error", ErrorReading::ModelNotFound),
    ("notfounderror", ErrorReading::ModelNotFound),
    ("context_length_exceeded", ErrorReading::ContextTooLong),
    ("contextwindowexceedederror", ErrorReading::ContextTooLong),
    ("string_above_max_length", ErrorReading::ContextTooLong),
    ("invalid_api_key", ErrorReading::InvalidKey),
    ("authentication_error", ErrorReading::InvalidKey),
    ("authenticationerror", ErrorReading::InvalidKey),
    ("auth_error", ErrorReading::InvalidKey),
    ("permission_error", ErrorReading::NoPermission),
    ("permissiondeniederror", ErrorReading::NoPermission),
    ("insufficient_quota", ErrorReading::OutOfCredit),
    ("credit_balance_exhausted", ErrorReading::OutOfCredit),
    ("project_spend_limit_exceeded", ErrorReading::OutOfCredit),
    ("billing_hard_limit_reached", ErrorReading::OutOfCredit),
    ("insufficient_balance", ErrorReading::OutOfCredit),
    ("billing_error", ErrorReading::OutOfCredit),
    ("enforced_spend_limit_reached", ErrorReading::OutOfCredit),
    ("budgetexceedederror", ErrorReading::OutOfCredit),
    ("budget_exceeded", ErrorReading::OutOfCredit),
    ("rate_limit_error", ErrorReading::RateLimited),
    ("rate_limit_exceeded", ErrorReading::RateLimited),
    ("ratelimiterror", ErrorReading::RateLimited),
    ("overloaded_error", ErrorReading::Overloaded),
    ("serviceunavailableerror", ErrorReading::Overloaded),
    ("content_filter", ErrorReading::ContentRefused),
    ("content_policy_violation", ErrorReading::ContentRefused),
    ("contentpolicyviolationerror", ErrorReading::ContentRefused),
    ("request_too_large", ErrorReading::TooLarge),
    ("timeout_error", ErrorReading::Timeout),
    ("timeout", ErrorReading::Timeout),
    ("api_error", ErrorReading::ServerError),
    ("server_error", ErrorReading::ServerError),
    ("internalservererror", ErrorReading::ServerError),
];

/// Phrases (lowercase) of the messages Anthropic, OpenAI, DeepSeek, vLLM and LiteLLM send, in
/// the order they are looked for: the specific before the general (LiteLLM's exception names
/// first, as they say what happened whatever the upstream's words).
const READINGS_BY_PHRASE: &[(&str, ErrorReading)] = &[
    ("litellm.notfounderror", ErrorReading::ModelNotFound),
    (
        "litellm.contextwindowexceedederror",
        ErrorReading::ContextTooLong,
    ),
    ("litellm.authenticationerror", ErrorReading::InvalidKey),
    ("litellm.permissiondeniederror", ErrorReading::NoPermission),
    ("litellm.budgetexceedederror", ErrorReading::OutOfCredit),
    ("litellm.ratelimiterror", ErrorReading::RateLimited),
    ("litellm.serviceunavailableerror", ErrorReading::Overloaded),
    (
        "litellm.contentpolicyviolationerror",
        ErrorReading::ContentRefused,
    ),
    ("litellm.timeout", ErrorReading::Timeout),
    ("maximum context length", ErrorReading::ContextTooLong),
    ("context length", ErrorReading::ContextTooLong),
    ("context window", ErrorReading::ContextTooLong),
    ("prompt is too long", ErrorReading::ContextTooLong),
    ("input is too long", ErrorReading::ContextTooLong),
    ("too many tokens", ErrorReading::ContextTooLong),
    ("reduce the length", ErrorReading::ContextTooLong),
    ("max_tokens", ErrorReading::MaxTokensTooHigh),
    ("max_completion_tokens", ErrorReading::MaxTokensTooHigh),
    ("does not exist", ErrorReading::ModelNotFound),
    ("model not exist", ErrorReading::ModelNotFound),
    ("model not found", ErrorReading::ModelNotFound),
    ("unknown model", ErrorReading::ModelNotFound),
    ("invalid model", ErrorReading::ModelNotFound),
    ("no such model", ErrorReading::ModelNotFound),
    ("model: ", ErrorReading::ModelNotFound),
    ("api key", ErrorReading::InvalidKey),
    ("api-key", ErrorReading::InvalidKey),
    ("authentication", ErrorReading::InvalidKey),
    ("unauthorized", ErrorReading::InvalidKey),
    ("proxy server token", ErrorReading::InvalidKey),
    ("permission", ErrorReading::NoPermission),
    ("not allowed", ErrorReading::NoPermission),
    ("credit balance", ErrorReading::OutOfCredit),
    ("insufficient balance", ErrorReading::OutOfCredit),
    ("spend limit", ErrorReading::OutOfCredit),
    ("usage limit", ErrorReading::OutOfCredit),
    ("quota", ErrorReading::OutOfCredit),
    ("budget", ErrorReading::OutOfCredit),
    ("rate limit", ErrorReading::RateLimited),
    ("overloaded", ErrorReading::Overloaded),
    ("content policy", ErrorReading::ContentRefused),
    ("content management policy", ErrorReading::ContentRefused),
    ("safety", ErrorReading::ContentRefused),
    ("request exceeds the maximum size", ErrorReading::TooLarge),
    ("payload too large", ErrorReading::TooLarge),
    ("timed out", ErrorReading::Timeout),
    ("timeout", ErrorReading::Timeout),
    ("roles must alternate", ErrorReading::BadRequest),
    ("content blocks", ErrorReading::BadRequest),
    ("messages", ErrorReading::BadRequest),
    ("invalid", ErrorReading::BadRequest),
    ("deserialize", ErrorReading::BadRequest),
    ("internal server error", ErrorReading::ServerError),
    ("internal error", ErrorReading::ServerError),
];

/// Reads a provider's error from its `type`, `code` and message (see [`ErrorReading`]).
pub fn read_error(kind: Option<&str>, code: Option<&str>, message: Option<&str>) -> ErrorReading {
    let by_code = [kind, code].into_iter().flatten().find_map(|v| {
        let v = v.to_ascii_lowercase();
        READINGS_BY_CODE
            .iter()
            .find(|(name, _)| *name == v)
            .map(|&(_, reading)| reading)
    });
    // `invalid_request_error` and friends say little: the message says more. A code that names
    // the cause exactly (model_not_found) wins over the message's words.
    if let Some(reading) = by_code {
        return reading;
    }
    let Some(message) = message else {
        return ErrorReading::Unrecognised;
    };
    let head: String = message
        .chars()
        .take(READ_CHARS)
        .collect::<String>()
        .to_lowercase();
    READINGS_BY_PHRASE
        .iter()
        .find(|(phrase, _)| head.contains(phrase))
        .map_or(ErrorReading::Unrecognised, |&(_, reading)| reading)
}

/// A provider's `type` or `code` as a log may show it: one short identifier (`invalid_request_error`,
/// `model_not_found`, LiteLLM's `"400"`), else nothing, since a proxy may put anything there.
fn identifier(value: &str) -> Option<&str> {
    let value = value.trim();
    let shaped = !value.is_empty()
        && value.len() <= 48
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    // A key has many digits; a status code (LiteLLM's `"400"`) has three.
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    (shaped && digits <= 3).then_some(value)
}

/// A log-safe description of a provider's error answer: `HTTP <status>`, the error's `type` and
/// `code` when they are identifiers, and what its message says as one of the fixed
/// [`ErrorReading`]s, e.g. `HTTP 400 invalid_request_error context_length_exceeded: context too
/// long`. No word of the message is kept: what it cannot be read as says only its length.
///
/// Reads the `error` object of Anthropic's, OpenAI's, DeepSeek's and LiteLLM's bodies, and vLLM's
/// older top-level one (`{"object":"error","message",…}`).
pub fn describe_llm_error(status: u16, body: &[u8]) -> String {
    let root =
        serde_json::from_slice::<Value>(strip_leading_keepalive(body)).unwrap_or(Value::Null);
    let error = match root.get("error") {
        Some(e @ Value::Object(_)) => e,
        _ if root.get("object").and_then(Value::as_str) == Some("error") => &root,
        _ => &Value::Null,
    };
    let text = |name: &str| match error.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (kind, code, message) = (text("type"), text("code"), text("message"));
    let mut out = format!("HTTP {status}");
    let mut shown: Vec<&str> = Vec::new();
    for value in [kind.as_deref(), code.as_deref()].into_iter().flatten() {
        if let Some(id) = identifier(value)
            && !shown.contains(&id)
            && id != status.to_string()
        {
            shown.push(id);
            out.push(' ');
            out.push_str(id);
        }
    }
    let reading = read_error(kind.as_deref(), code.as_deref(), message.as_deref());
    match (reading, &message) {
        (ErrorReading::Unrecognised, Some(m)) => {
            out.push_str(&format!(
                ": message not recognised ({} chars)",
                m.chars().count()
            ));
        }
        (ErrorReading::Unrecognised, None) if !body.is_empty() && error.is_null() => {
            out.push_str(&format!(": not an error object ({} bytes)", body.len()));
        }
        (ErrorReading::Unrecognised, None) => {}
        (reading, _) => {
            out.push_str(": ");
            out.push_str(reading.label());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::LlmErrorClass::*;
    use super::Provider::*;
    use super::*;

    const fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    const ANTHROPIC_RATE_LIMIT: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_1"}"#;
    const ANTHROPIC_SPEND_CAP: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your monthly spend limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
    const ANTHROPIC_OVERLOADED: &str =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    const ANTHROPIC_CREDIT: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
    const ANTHROPIC_BAD_REQUEST: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}"#;
    const OPENAI_RATE_LIMIT: &str = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const OPENAI_CREDIT: &str = r#"{"error":{"message":"Credit balance exhausted","type":"billing","code":"credit_balance_exhausted"}}"#;
    const OPENAI_PROJECT_CAP: &str = r#"{"error":{"message":"Project spend limit","type":"requests","code":"project_spend_limit_exceeded"}}"#;

    #[test]
    fn anthropic_statuses_and_bodies_are_classified() {
        let cases: &[(u16, Option<&str>, &str, LlmErrorClass)] = &[
            (
                429,
                Some("30"),
                ANTHROPIC_RATE_LIMIT,
                RateLimited {
                    retry_after: secs(30),
                },
            ),
            (
                429,
                None,
                ANTHROPIC_RATE_LIMIT,
                RateLimited { retry_after: None },
            ),
            (429, None, "", RateLimited { retry_after: None }),
            (429, Some("30"), ANTHROPIC_SPEND_CAP, Quota),
            (
                529,
                None,
                ANTHROPIC_OVERLOADED,
                Overloaded { retry_after: None },
            ),
            (
                529,
                Some("5"),
                ANTHROPIC_OVERLOADED,
                Overloaded {
                    retry_after: secs(5),
                },
            ),
            (
                500,
                None,
                r#"{"type":"error","error":{"type":"api_error"}}"#,
                Transient,
            ),
            (502, None, "<html>bad gateway</html>", Transient),
            (409, None, "", Transient),
            (
                401,
                None,
                r#"{"error":{"type":"authentication_error"}}"#,
                Auth,
            ),
            (403, None, r#"{"error":{"type":"permission_error"}}"#, Auth),
            (402, None, r#"{"error":{"type":"billing_error"}}"#, Quota),
            (400, None, ANTHROPIC_CREDIT, Quota),
            (400, None, ANTHROPIC_BAD_REQUEST, Permanent),
            (
                404,
                None,
                r#"{"error":{"type":"not_found_error"}}"#,
                Permanent,
            ),
            (
                413,
                None,
                r#"{"error":{"type":"request_too_large"}}"#,
                Permanent,
            ),
            (
                200,
                None,
                ANTHROPIC_OVERLOADED,
                Overloaded { retry_after: None },
            ),
            (418, None, "", Permanent),
            (599, None, "", Transient),
        ];
        for &(status, retry_after, body, expected) in cases {
            let got = classify_llm_error(Anthropic, status, retry_after, body.as_bytes());
            assert_eq!(got, expected, "{status} {retry_after:?} {body}");
        }
    }

    #[test]
    fn openai_compatible_statuses_and_bodies_are_classified() {
        let cases: &[(u16, Option<&str>, &str, LlmErrorClass)] = &[
            (
                429,
                Some("2"),
                OPENAI_RATE_LIMIT,
                RateLimited {
                    retry_after: secs(2),
                },
            ),
            (
                429,
                Some("0.5"),
                OPENAI_RATE_LIMIT,
                RateLimited {
                    retry_after: Some(Duration::from_millis(500)),
                },
            ),
            (429, None, "\n\n", RateLimited { retry_after: None }),
            (429, Some("20"), OPENAI_QUOTA, Quota),
            (429, None, OPENAI_CREDIT, Quota),
            (429, None, OPENAI_PROJECT_CAP, Quota),
            (
                400,
                None,
                r#"{"error":{"message":"Billing hard limit has been reached","type":"invalid_request_error","param":null,"code":"billing_hard_limit_reached"}}"#,
                Quota,
            ),
            (
                400,
                None,
                r#"{"error":{"message":"bad","type":"invalid_request_error","code":null}}"#,
                Permanent,
            ),
            (401, None, "", Auth),
            (403, None, "", Auth),
            (
                402,
                None,
                r#"{"error":{"message":"Insufficient Balance"}}"#,
                Quota,
            ),
            (500, None, "", Transient),
            (502, None, "", Transient),
            (504, None, "", Transient),
            (503, None, "", Overloaded { retry_after: None }),
            (
                503,
                Some("10"),
                "",
                Overloaded {
                    retry_after: secs(10),
                },
            ),
            (
                400,
                None,
                r#"{"error":{"code":"context_length_exceeded"}}"#,
                Permanent,
            ),
            (404, None, "", Permanent),
            (422, None, "", Permanent),
            (200, None, "\n\n\n", Permanent),
        ];
        for &(status, retry_after, body, expected) in cases {
            let got = classify_llm_error(OpenAiCompatible, status, retry_after, body.as_bytes());
            assert_eq!(got, expected, "{status} {retry_after:?} {body}");
        }
    }

    #[test]
    fn bodies_after_deepseek_keepalive_lines_are_still_read() {
        let body = format!("\n\n\r\n: keep-alive\n\n{OPENAI_QUOTA}");
        assert_eq!(
            classify_llm_error(OpenAiCompatible, 429, None, body.as_bytes()),
            Quota
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_rejects_everything_else() {
        let cases = [
            ("0", Some(Duration::ZERO)),
            ("30", secs(30)),
            (" 7 ", secs(7)),
            ("1.5", Some(Duration::from_millis(1_500))),
            ("0.25", Some(Duration::from_millis(250))),
            ("", None),
            ("   ", None),
            ("-1", None),
            ("+3", None),
            ("1e3", None),
            ("NaN", None),
            ("inf", None),
            ("1.2.3", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),
            ("99999999999999999999999999999", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value), expected, "{value:?}");
        }
    }

    #[test]
    fn keepalive_stripping_skips_blank_lines_comments_and_bom_only() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"{\"a\":1}", b"{\"a\":1}"),
            (b"\n\n\n{\"a\":1}\n", b"{\"a\":1}\n"),
            (b" \r\n\t {}", b"{}"),
            (b": keep-alive\n\n: keep-alive\n{}", b"{}"),
            (b"\xEF\xBB\xBF\n{}", b"{}"),
            (b": keep-alive", b""),
            (b"\n\n", b""),
            (b"", b""),
            (b"data: {}", b"data: {}"),
        ];
        for &(body, expected) in cases {
            assert_eq!(
                strip_leading_keepalive(body),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn retryable_classes_and_their_hints() {
        assert!(RateLimited { retry_after: None }.is_retryable());
        assert!(Overloaded { retry_after: None }.is_retryable());
        assert!(Transient.is_retryable());
        for class in [Auth, Quota, Permanent] {
            assert!(!class.is_retryable(), "{class:?}");
        }
        assert_eq!(
            RateLimited {
                retry_after: secs(3)
            }
            .retry_after(),
            secs(3)
        );
        assert_eq!(Transient.retry_after(), None);
    }
    /// Realistic error bodies of Anthropic, OpenAI, DeepSeek, vLLM and LiteLLM, and what the log
    /// line says of each: enough to tell a missing model from a long context from a bad key.
    #[test]
    fn provider_errors_are_described_by_type_code_and_reading_only() {
        let cases: &[(u16, &str, &str)] = &[
            // Anthropic
            (
                404,
                r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-sonnet-9"}}"#,
                "HTTP 404 not_found_error: model not found",
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#,
                "HTTP 400 invalid_request_error: context too long",
            ),
            (
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
                "HTTP 401 authentication_error: invalid key",
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for claude-sonnet-4"}}"#,
                "HTTP 400 invalid_request_error: max_tokens above the model's limit",
            ),
            (
                400,
                ANTHROPIC_CREDIT,
                "HTTP 400 invalid_request_error: out of credit",
            ),
            (
                400,
                ANTHROPIC_BAD_REQUEST,
                "HTTP 400 invalid_request_error: request refused as malformed",
            ),
            (
                529,
                ANTHROPIC_OVERLOADED,
                "HTTP 529 overloaded_error: overloaded",
            ),
            // OpenAI
            (
                404,
                r#"{"error":{"message":"The model `gpt-5-turbo` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
                "HTTP 404 invalid_request_error model_not_found: model not found",
            ),
            (
                400,
                r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130211 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
                "HTTP 400 invalid_request_error context_length_exceeded: context too long",
            ),
            (
                401,
                r#"{"error":{"message":"Incorrect API key provided: sk-proj-Abc1****wxyz. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
                "HTTP 401 invalid_request_error invalid_api_key: invalid key",
            ),
            (
                429,
                OPENAI_QUOTA,
                "HTTP 429 insufficient_quota: out of credit",
            ),
            // DeepSeek
            (
                401,
                r#"{"error":{"message":"Authentication Fails, Your api key: ****9f2c is invalid","type":"authentication_error","param":null,"code":"invalid_request_error"}}"#,
                "HTTP 401 authentication_error invalid_request_error: invalid key",
            ),
            (
                402,
                r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#,
                "HTTP 402 unknown_error invalid_request_error: out of credit",
            ),
            (
                400,
                r#"{"error":{"message":"This model's maximum context length is 65536 tokens. However, you requested 70312 tokens (66312 in the messages, 4000 in the completion). Please reduce the length of the messages or completion.","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}"#,
                "HTTP 400 invalid_request_error: context too long",
            ),
            // vLLM, older top-level shape and newer nested one
            (
                404,
                r#"{"object":"error","message":"The model `llama-3-70b` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
                "HTTP 404 NotFoundError: model not found",
            ),
            (
                400,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, you requested 9120 tokens in the messages, Please reduce the length of the messages.","type":"BadRequestError","param":null,"code":400}}"#,
                "HTTP 400 BadRequestError: context too long",
            ),
            // LiteLLM
            (
                404,
                r#"{"error":{"message":"litellm.NotFoundError: AnthropicException - model: claude-9. Received Model Group=claude\nAvailable Model Group Fallbacks=None","type":null,"param":null,"code":"404"}}"#,
                "HTTP 404: model not found",
            ),
            (
                401,
                r#"{"error":{"message":"Authentication Error, Invalid proxy server token passed. Received API Key = sk-...9f2c, Key Hash (Token) =e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855. Unable to find token in cache or `LiteLLM_VerificationTokenTable`","type":"auth_error","param":"None","code":"401"}}"#,
                "HTTP 401 auth_error: invalid key",
            ),
            (
                400,
                r#"{"error":{"message":"litellm.ContextWindowExceededError: litellm.BadRequestError: prompt is too long","type":null,"param":null,"code":"400"}}"#,
                "HTTP 400: context too long",
            ),
            // Nothing known: only the length.
            (
                400,
                r#"{"error":{"message":"hola soy Camila","type":"weird"}}"#,
                "HTTP 400 weird: message not recognised (15 chars)",
            ),
            (
                502,
                "<html>Bad Gateway</html>",
                "HTTP 502: not an error object (24 bytes)",
            ),
            (500, "", "HTTP 500"),
        ];
        for &(status, body, want) in cases {
            assert_eq!(describe_llm_error(status, body.as_bytes()), want, "{body}");
        }
    }

    /// What a proxy echoes of the request, quoted or not, never reaches the description: only
    /// identifiers and fixed readings do.
    #[test]
    fn echoed_messages_and_prompts_never_reach_the_description() {
        let secrets = [
            "Camila",
            "Rojas",
            "frambuesa",
            "4521",
            "301 999 8877",
            "sk-proj-Abc123Def456",
            "Eres el asistente",
            "Tienda Lulo",
        ];
        let bodies = [
            r#"{"error":{"message":"litellm.BadRequestError: AnthropicException - messages: text content blocks must be non-empty. Received Messages=[{role: user, content: hola soy Camila Rojas, mi pedido 4521 de frambuesa, llamame al +57 301 999 8877}, {role: system, content: Eres el asistente de Tienda Lulo}]","type":null,"param":null,"code":"400"}}"#,
            r#"{"error":{"message":"Camila Rojas frambuesa 4521 sk-proj-Abc123Def456 Eres el asistente de Tienda Lulo","type":"invalid_request_error","code":null}}"#,
            r#"{"error":{"message":"rate limit: Eres el asistente de Tienda Lulo","type":"Camila Rojas","code":"sk-proj-Abc123Def456"}}"#,
            r#"{"object":"error","message":"Eres el asistente de Tienda Lulo. Camila: frambuesa 4521","type":"BadRequestError","code":400}"#,
        ];
        for body in bodies {
            let described = describe_llm_error(400, body.as_bytes());
            for secret in secrets {
                assert!(!described.contains(secret), "{secret}: {described}");
            }
        }
    }
}
