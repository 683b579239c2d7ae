//! Classification of WhatsApp Cloud API (Graph API) errors into what the sender should do next.
//!
//! The decision is made on `error.code`, **not** on the HTTP status: Meta returns its throttling
//! errors (4, 80007, 130429, 131048, 131056) as HTTP 400 without a `Retry-After` (and 131057,
//! a number in maintenance for up to a minute, is throttled alike), so a status-based
//! classifier would drop rate-limited messages as permanent failures. The same codes also arrive
//! asynchronously in `failed` status webhooks; [`classify_status_error`] covers that path with the
//! same table. This module parses and classifies only: it does not wait, retry or alert (the sender
//! combines [`ErrorClass`] with [`crate::retry`]).

use serde_json::Value;

/// Which limit a throttling error hit; it decides *what* to slow down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThrottleScope {
    /// 130429: the business number's messages-per-second throughput. Back off briefly, smooth the rate.
    Number,
    /// 131056: pair rate limit to one recipient. Back off that recipient only
    /// ([`crate::retry::pair_rate_backoff`]); other recipients are unaffected.
    Recipient,
    /// 4: the app's Graph API call-rate limit (rolling hour). Pause the app's calls for a long while.
    App,
    /// 80007: the WhatsApp Business Account's rate limit. Pause that account's calls for a long while.
    Waba,
    /// 131048: spam rate limit, the number is restricted for quality. Pause the number and alert.
    Spam,
    /// 131057: the number is in maintenance (e.g. its throughput upgrade, up to a minute). Hold
    /// the number for that minute: retried sooner, a message would use up its attempts first.
    Maintenance,
}

/// What the sender should do with a message whose send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A rate limit: retry later, slowing down the given scope.
    Throttled { scope: ThrottleScope },
    /// Temporary trouble on Meta's side: retry with backoff, a bounded number of times.
    Transient,
    /// This message can never succeed as it is: do not retry it.
    Permanent,
    /// The account, token, number or permissions need an operator: stop the sender and alert.
    Config,
    /// 131047: more than 24 h since the user last wrote. Only a template (or a new message from the
    /// user) can reach them; retrying the same free-form message is pointless.
    ReEngagement,
}

impl ErrorClass {
    /// The class as a metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Throttled { .. } => "throttled",
            Self::Transient => "transient",
            Self::Config => "config",
            Self::Permanent => "permanent",
            Self::ReEngagement => "re_engagement",
        }
    }

    /// Whether retrying the same request later can succeed without anyone changing anything.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Transient)
    }

    /// Whether the same message may be sent again after failing with this class: it is
    /// retryable, or it will go once an operator fixed the configuration.
    pub fn worth_resending(self) -> bool {
        self.is_retryable() || self == Self::Config
    }
}

/// The `error` object of a Graph API error response, with every field except `code` optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    /// `error.code`: the only field to build logic on.
    pub code: i64,
    /// `error.error_subcode`: deprecated for Cloud API errors, still sent by generic Graph errors.
    pub subcode: Option<i64>,
    /// `error.message`, often `"(#<code>) <title>"`; empty when absent. For humans and logs only.
    pub message: String,
    /// `error.type`, e.g. `OAuthException`.
    pub kind: Option<String>,
    /// `error.error_data.details`: Meta's longer explanation, for humans and logs.
    pub details: Option<String>,
    /// `error.fbtrace_id`: quote it to Meta support; log it with every failure.
    pub fbtrace_id: Option<String>,
    /// `error.is_transient`, when Meta sends it.
    pub is_transient: Option<bool>,
}

/// `error_subcode` of a generic Graph error 100 whose object (the business number the request
/// names) does not exist or may not be used with the token: reference C.1's "code 100 subcode 33",
/// the table's 33 ("business phone number deleted", CFG).
pub const UNKNOWN_OBJECT_SUBCODE: i64 = 33;

impl GraphError {
    /// [`classify`] applied to this error and the HTTP status it came with, and to its subcode:
    /// 100 with [`UNKNOWN_OBJECT_SUBCODE`] is [`ErrorClass::Config`], not one message's bad
    /// parameter: no message of the number can go until an operator fixes it.
    pub fn class(&self, http_status: u16) -> ErrorClass {
        if self.code == 100 && self.subcode == Some(UNKNOWN_OBJECT_SUBCODE) {
            return ErrorClass::Config;
        }
        classify(self.code, http_status, self.is_transient)
    }
}

/// Parses a Graph API error body `{"error": {"code": …, …}}`.
///
/// `code` and `error_subcode` are accepted as JSON integers or as strings of digits (some relays
/// stringify them). Returns `None` when the body is not JSON, has no `error` object, or has no
/// usable `code`. Leading whitespace is fine; unknown fields are ignored.
pub fn parse_graph_error(body: &[u8]) -> Option<GraphError> {
    let root: Value = serde_json::from_slice(body).ok()?;
    let error = root.get("error")?;
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    Some(GraphError {
        code: int_or_string(error.get("code")?)?,
        subcode: error.get("error_subcode").and_then(int_or_string),
        message: text(error.get("message")).unwrap_or_default(),
        kind: text(error.get("type")),
        details: text(error.pointer("/error_data/details")),
        fbtrace_id: text(error.get("fbtrace_id")),
        is_transient: error.get("is_transient").and_then(Value::as_bool),
    })
}

fn int_or_string(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The class of every code in Meta's error table (reference C.2), or `None` for codes it lists
/// nowhere. Shared by the synchronous and the webhook path.
fn known_class(code: i64) -> Option<ErrorClass> {
    use ErrorClass::*;
    use ThrottleScope::*;
    let class = match code {
        131047 => ReEngagement,

        130429 => Throttled { scope: Number },
        131056 => Throttled { scope: Recipient },
        4 => Throttled { scope: App },
        80007 => Throttled { scope: Waba },
        131048 => Throttled { scope: Spam },
        131057 => Throttled { scope: Maintenance },

        // 1 is "invalid request or possible server error": retried once ([`max_tries`]), then
        // permanent. 131000 ("something went wrong") is retried within the caller's bounds.
        1 | 2 | 131000 | 131016 | 133004 => Transient,

        // Token, permissions, account, registration and number problems: an operator must act.
        // 131064 (messaging limit after template-classification violations) is listed as
        // "R-slow/CFG"; it only clears after a human reviews templates, so it is Config here.
        0 | 3 | 10 | 33 | 190 | 368 | 131005 | 131030 | 131031 | 131042 | 131045 | 131064 => Config,
        200..=299 => Config,
        133000 | 133005..=133010 | 133015 | 133016 => Config,

        // Wrong for this message (or this recipient): sending it again as is cannot help.
        // 130497 (country restriction) is "P/CFG": permanent for this recipient, other users are fine.
        // Template problems (132xxx) are "P/CFG": permanent for this message; the template owner
        // sees them in the dead-letter reason.
        100 | 130472 | 130497 | 131008 | 131009 | 131021 | 131026 | 131049 | 131050 | 131051
        | 131052 | 131053 | 131060 | 135000 => Permanent,
        132000..=132016 | 132068 | 132069 => Permanent,

        _ => return None,
    };
    Some(class)
}

/// How many tries in all a transient `code` allows, when Meta's table bounds it more tightly than
/// the caller's own policy: 1 ("invalid request or possible server error") is retried once, then
/// permanent (reference C.2: "R once, then P"). `None`: the caller's bounds alone.
pub fn max_tries(code: i64) -> Option<u32> {
    (code == 1).then_some(2)
}

/// Whether Meta's error table (reference C.2) lists `code`. A refusal with a code it does not
/// list is classed by its HTTP status alone, and someone should look at it.
pub fn is_known_code(code: i64) -> bool {
    known_class(code).is_some()
}

/// The configuration codes a new access token fixes (reference C.2: 190 "access token expired,
/// new token"; 0 "can't authenticate, refresh token"). A permission, account or number problem
/// (10, 200–299, 131031, 100/33…) stays until someone fixes it at Meta, whatever the token.
pub const NEW_TOKEN_CODES: [i64; 2] = [0, 190];

/// Whether putting in a new access token fixes a configuration error `code`.
pub fn new_token_fixes(code: i64) -> bool {
    NEW_TOKEN_CODES.contains(&code)
}

/// What a configuration error `code` means, in a few words for an operator (reference C.2),
/// shown beside a paused channel; Meta's own message is not (its wording is not ours to vouch
/// for).
pub fn config_meaning(code: i64) -> &'static str {
    match code {
        0 => "cannot authenticate: the access token is invalid",
        190 => "the access token expired",
        3 => "a capability or permission the app lacks",
        10 => "permission denied",
        200..=299 => "an API permission was not granted or was removed",
        33 => "the business phone number was deleted",
        100 => "Meta does not know the business number, or the token may not use it",
        368 => "temporarily blocked for policy violations",
        131005 => "access denied",
        131030 => "the recipient is not in the test number's allowed list",
        131031 => "the business account is locked",
        131042 => "a business eligibility or payment problem",
        131045 => "the number's registration certificate is incorrect",
        131064 => "messaging limited after template-classification violations",
        133000 => "the number's deregistration is incomplete",
        133005..=133009 | 133015 => "a two-step PIN or registration problem",
        133010 => "the phone number is not registered",
        133016 => "too many register or deregister attempts",
        _ => "a configuration error",
    }
}

/// Classifies a synchronous Graph API error from its `error.code`, the HTTP status it came with and
/// its optional `is_transient` hint.
///
/// Codes in Meta's table are classified by the table alone (a throttle is a throttle whatever the
/// status). For codes the table does not list: `is_transient == Some(true)` → [`ErrorClass::Transient`];
/// HTTP 5xx → Transient; HTTP 429 → Transient (a throttle we cannot scope); any other status
/// (4xx included) → [`ErrorClass::Permanent`], which the sender should also alert on.
pub fn classify(code: i64, http_status: u16, is_transient: Option<bool>) -> ErrorClass {
    if let Some(class) = known_class(code) {
        return class;
    }
    if is_transient == Some(true) || http_status == 429 || (500..600).contains(&http_status) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// Classifies the code of an error carried by a `failed` status webhook (`statuses[].errors[].code`).
///
/// Same table as [`classify`] (131047 → ReEngagement; 131026, 131049, 131050, 130472 → Permanent;
/// throttles and transient codes keep their class, so a message Meta failed with 130429 can be sent
/// again). A code the table does not list is [`ErrorClass::Permanent`]: Meta has already given up
/// on delivering that message and there is no HTTP status to suggest otherwise.
pub fn classify_status_error(code: i64) -> ErrorClass {
    known_class(code).unwrap_or(ErrorClass::Permanent)
}

#[cfg(test)]
mod tests {
    use super::ErrorClass::*;
    use super::ThrottleScope::*;
    use super::*;

    #[test]
    fn only_token_codes_are_fixed_by_a_new_token_and_every_configuration_code_has_a_meaning() {
        for code in [0, 190] {
            assert!(new_token_fixes(code), "{code}");
        }
        // Permissions, a locked account, a number Meta does not know: not the token's doing.
        for code in [3, 10, 200, 299, 33, 100, 131031, 131042, 133010] {
            assert!(!new_token_fixes(code), "{code}");
        }
        for &(code, _, class) in TABLE {
            if class == Config {
                assert_ne!(config_meaning(code), "a configuration error", "{code}");
            }
        }
        assert_eq!(config_meaning(190), "the access token expired");
        assert_eq!(config_meaning(131031), "the business account is locked");
    }

    /// Every code in reference C.2, with the HTTP status Meta lists for it (400 where it lists none).
    const TABLE: &[(i64, u16, ErrorClass)] = &[
        (0, 401, Config),
        (190, 401, Config),
        (3, 500, Config),
        (10, 403, Config),
        (200, 403, Config),
        (250, 403, Config),
        (299, 403, Config),
        (4, 400, Throttled { scope: App }),
        (80007, 400, Throttled { scope: Waba }),
        (130429, 400, Throttled { scope: Number }),
        (131048, 400, Throttled { scope: Spam }),
        (131056, 400, Throttled { scope: Recipient }),
        (133016, 400, Config),
        (131064, 400, Config),
        (368, 403, Config),
        (131031, 403, Config),
        (130497, 400, Permanent),
        (1, 400, Transient),
        (2, 503, Transient),
        (33, 400, Config),
        (100, 400, Permanent),
        (130472, 400, Permanent),
        (131000, 500, Transient),
        (131005, 403, Config),
        (131008, 400, Permanent),
        (131009, 400, Permanent),
        (131016, 500, Transient),
        (131021, 400, Permanent),
        (131026, 400, Permanent),
        (131030, 400, Config),
        (131042, 400, Config),
        (131045, 500, Config),
        (131047, 400, ReEngagement),
        (131049, 400, Permanent),
        (131050, 400, Permanent),
        (131051, 400, Permanent),
        (131052, 400, Permanent),
        (131053, 400, Permanent),
        (131057, 500, Throttled { scope: Maintenance }),
        (131060, 400, Permanent),
        (132000, 400, Permanent),
        (132001, 404, Permanent),
        (132016, 400, Permanent),
        (132068, 400, Permanent),
        (132069, 400, Permanent),
        (133000, 500, Config),
        (133004, 503, Transient),
        (133005, 400, Config),
        (133009, 400, Config),
        (133010, 400, Config),
        (133015, 400, Config),
        (135000, 400, Permanent),
    ];

    #[test]
    fn every_code_in_metas_table_has_its_class() {
        for &(code, status, expected) in TABLE {
            assert_eq!(classify(code, status, None), expected, "code {code}");
        }
    }

    #[test]
    fn known_codes_ignore_the_http_status_and_the_transient_hint() {
        for &(code, _, expected) in TABLE {
            for status in [200, 400, 429, 500, 503] {
                for hint in [None, Some(true), Some(false)] {
                    assert_eq!(
                        classify(code, status, hint),
                        expected,
                        "code {code} {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_codes_fall_back_on_status_and_hint() {
        let cases = [
            (999_999, 500, None, Transient),
            (999_999, 502, None, Transient),
            (999_999, 503, Some(false), Transient),
            (999_999, 400, None, Permanent),
            (999_999, 404, None, Permanent),
            (999_999, 400, Some(false), Permanent),
            (999_999, 400, Some(true), Transient),
            (999_999, 429, None, Transient),
            (-5, 200, None, Permanent),
        ];
        for (code, status, hint, expected) in cases {
            assert_eq!(
                classify(code, status, hint),
                expected,
                "{code} {status} {hint:?}"
            );
        }
    }

    #[test]
    fn status_webhook_errors_are_classified_with_the_same_table() {
        let cases = [
            (131047, ReEngagement),
            (131026, Permanent),
            (131049, Permanent),
            (131050, Permanent),
            (130472, Permanent),
            (130429, Throttled { scope: Number }),
            (131000, Transient),
            (190, Config),
            (424_242, Permanent),
        ];
        for (code, expected) in cases {
            assert_eq!(classify_status_error(code), expected, "code {code}");
        }
    }

    #[test]
    fn only_throttles_and_transient_errors_are_retryable() {
        assert!(Throttled { scope: Recipient }.is_retryable());
        assert!(Transient.is_retryable());
        assert!(!Permanent.is_retryable());
        assert!(!Config.is_retryable());
        assert!(!ReEngagement.is_retryable());
    }

    #[test]
    fn a_full_graph_error_body_is_parsed() {
        let body = br#"{
          "error": {
            "message": "(#131056) (Business Account, Consumer Account) pair rate limit hit",
            "type": "OAuthException",
            "code": 131056,
            "error_subcode": 2494055,
            "is_transient": true,
            "error_data": {"messaging_product": "whatsapp", "details": "Too many messages."},
            "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"
          }
        }"#;
        let error = parse_graph_error(body).expect("parses");
        assert_eq!(
            error,
            GraphError {
                code: 131056,
                subcode: Some(2494055),
                message: "(#131056) (Business Account, Consumer Account) pair rate limit hit"
                    .into(),
                kind: Some("OAuthException".into()),
                details: Some("Too many messages.".into()),
                fbtrace_id: Some("Az8or2yhqkZfEZ-_4Qn_Bam".into()),
                is_transient: Some(true),
            }
        );
        assert_eq!(error.class(400), Throttled { scope: Recipient });
    }

    #[test]
    fn code_1_is_retried_once_and_other_transient_codes_within_the_callers_bounds() {
        assert_eq!(max_tries(1), Some(2));
        for code in [2, 131000, 131016, 133004, 999_999] {
            assert_eq!(max_tries(code), None, "code {code}");
        }
    }

    #[test]
    fn an_unknown_business_number_is_a_configuration_error() {
        let unknown = parse_graph_error(
            br#"{"error":{"message":"Unsupported post request. Object with ID '1' does not exist","type":"GraphMethodException","code":100,"error_subcode":33}}"#,
        )
        .unwrap();
        assert_eq!(unknown.class(400), Config);
        for body in [
            &br#"{"error":{"code":100}}"#[..],
            br#"{"error":{"code":100,"error_subcode":2494010}}"#,
        ] {
            assert_eq!(parse_graph_error(body).unwrap().class(400), Permanent);
        }
    }

    #[test]
    fn parse_accepts_string_codes_and_missing_fields() {
        type CodeAndSubcode = Option<(i64, Option<i64>)>;
        let cases: &[(&[u8], CodeAndSubcode)] = &[
            (br#"{"error":{"code":"131047"}}"#, Some((131047, None))),
            (
                br#"{"error":{"code":" 4 ","error_subcode":"33"}}"#,
                Some((4, Some(33))),
            ),
            (
                br#"  {"error":{"code":190,"extra":[1,2]}}"#,
                Some((190, None)),
            ),
            (br#"{"error":{"code":"abc"}}"#, None),
            (br#"{"error":{"code":1.5}}"#, None),
            (br#"{"error":{"message":"no code"}}"#, None),
            (br#"{"success":true}"#, None),
            (br#"{"error":"oops"}"#, None),
            (b"<html>502 Bad Gateway</html>", None),
            (b"", None),
        ];
        for (body, expected) in cases {
            let got = parse_graph_error(body).map(|e| (e.code, e.subcode));
            assert_eq!(got, *expected, "{}", String::from_utf8_lossy(body));
        }
        let bare = parse_graph_error(br#"{"error":{"code":2}}"#).unwrap();
        assert_eq!(bare.message, "");
        assert_eq!(
            (bare.kind, bare.details, bare.fbtrace_id),
            (None, None, None)
        );
        assert_eq!(bare.is_transient, None);
    }
}
