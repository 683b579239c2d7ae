//! Classification of failed LLM provider calls (Anthropic Messages, OpenAI-compatible chat
//! completions such as OpenAI and DeepSeek) into what the worker should do next.
//!
//! The HTTP status alone is not enough: a 429 is either "slow down" (retry after `retry-after`) or
//! "the monthly spend cap is reached" (do not retry until someone pays), and only the body tells them
//! apart. This module reads status, `retry-after` and body; it never performs the request, sleeps or
//! decides how many times to retry (that is [`crate::retry`]).

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
}
