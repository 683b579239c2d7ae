//! What Meta tells a business about its numbers, its account and its templates, read from a
//! change of a field other than `messages` ([`FieldEvent`]): a number flagged or its messaging
//! limit changed (`phone_number_quality_update`), the business account restricted, disabled or
//! in violation (`account_update`), a template approved, rejected or paused
//! (`message_template_status_update`).
//!
//! Our API reference (A.3) names these fields but not their payloads. The shapes below are
//! Meta's public webhook reference ("not in our reference; from Meta's public docs"), as copied
//! in public repositories and vendors' pages:
//! - `phone_number_quality_update`: `{"display_phone_number": "15550783881", "event":
//!   "THROUGHPUT_UPGRADE", "current_limit": "TIER_UNLIMITED"}` (Meta's example, in
//!   LimaLb01/endpoint-flow `docs_whatsappflow/docs_apiwhatsapp/phone_number_quality_update.md`,
//!   which also lists `old_limit` and `max_daily_conversations_per_business`, the portfolio's
//!   limit that replaces `current_limit` from February 2026); events `FLAGGED`, `UNFLAGGED`,
//!   `UPGRADE`, `DOWNGRADE`, `ONBOARDING`, `THROUGHPUT_UPGRADE` (itniotech's and innopaas's
//!   pages of the same webhook; a TypeScript handler's example
//!   `{"display_phone_number": "16505551111", "event": "FLAGGED", "current_limit": "TIER_10K"}`).
//!   It names the number by its display number only, never its `phone_number_id` (taken when a
//!   payload has one).
//! - `account_update`: `{"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "DISABLE" |
//!   "REINSTATE" | "SCHEDULE_FOR_DISABLE", "waba_ban_date": "April 17, 2025"}}`, `{"event":
//!   "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"}}` (Meta's examples in
//!   `accoutn_update.md` of the same repository) and `{"event": "ACCOUNT_RESTRICTION",
//!   "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
//!   "expiration": "2026-04-19T13:59:20+0000"}]}` (docs.wati.io, "WABA Account Content
//!   Updated"; docs.ycloud.com's `whatsapp.business_account.updated` lists the same types).
//! - `message_template_status_update`: `{"event": "REJECTED", "message_template_id":
//!   1689556908129835, "message_template_name": "abandoned_cart", "message_template_language":
//!   "en", "reason": "INVALID_FORMAT", "message_template_category": "MARKETING"}`, with
//!   `other_info.title` (`FIRST_PAUSE`…) for a pause (Meta's examples in
//!   `message_template_status_update.md` of the same repository).
//!
//! Everything is read tolerantly: every field is optional, an id may come as a number or a
//! string, an unknown event is kept as Meta wrote it, and a value of the wrong shape reads as
//! absent. Nothing here fails: a change that says nothing we can use is [`AccountChange::Other`],
//! and the stream entry that carries it is kept either way.

use serde::Deserialize;
use serde_json::Value;

use crate::envelope::FieldEvent;

/// The field of a number's quality and messaging-limit changes.
pub const QUALITY_FIELD: &str = "phone_number_quality_update";
/// The field of the business account's changes (restrictions, bans, violations…).
pub const ACCOUNT_FIELD: &str = "account_update";
/// The field of a template's status changes.
pub const TEMPLATE_STATUS_FIELD: &str = "message_template_status_update";

/// What one change says, as far as wafleet acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    Quality(QualityUpdate),
    Account(AccountUpdate),
    TemplateStatus(TemplateStatusUpdate),
    /// Another field, or one of ours whose value is not an object: kept on the events stream,
    /// nothing else.
    Other,
}

/// A `phone_number_quality_update`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QualityUpdate {
    /// The number as Meta displays it (digits, perhaps with `+` and spaces).
    pub display_phone_number: Option<String>,
    /// Not in Meta's documented payload; taken when present.
    pub phone_number_id: Option<String>,
    /// `FLAGGED`, `UNFLAGGED`, `UPGRADE`, `DOWNGRADE`, `ONBOARDING`, `THROUGHPUT_UPGRADE`… as
    /// Meta wrote it.
    pub event: Option<String>,
    /// The messaging-limit tier now: `max_daily_conversations_per_business` (the portfolio's,
    /// Meta's newer field) or else `current_limit` (`TIER_1K`…).
    pub limit: Option<String>,
}

impl QualityUpdate {
    /// Whether the event says the number is flagged: its quality is low and, unless it
    /// improves within 7 days, its messaging limit goes down.
    pub fn flags(&self) -> bool {
        self.event.as_deref() == Some("FLAGGED")
    }
}

/// An `account_update`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountUpdate {
    /// `DISABLED_UPDATE`, `ACCOUNT_RESTRICTION`, `ACCOUNT_VIOLATION`, `ACCOUNT_DELETED`,
    /// `PARTNER_ADDED`… as Meta wrote it.
    pub event: Option<String>,
    /// `ban_info.waba_ban_state`: `DISABLE`, `SCHEDULE_FOR_DISABLE`, `REINSTATE`.
    pub ban_state: Option<String>,
    /// `restriction_info[]`: what the account may not do, and until when.
    pub restrictions: Vec<Restriction>,
    /// `violation_info.violation_type`.
    pub violation: Option<String>,
}

/// One `restriction_info[]` item.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Restriction {
    /// `RESTRICTED_BIZ_INITIATED_MESSAGING`, `RESTRICTED_CUSTOMER_INITIATED_MESSAGING`,
    /// `RESTRICTED_ADD_PHONE_NUMBER_ACTION`…
    #[serde(rename = "type")]
    pub restriction_type: String,
    /// When it lifts, as Meta wrote it (`2026-04-19T13:59:20+0000`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

impl AccountUpdate {
    /// Whether the account is disabled or about to be.
    pub fn disables(&self) -> bool {
        matches!(
            self.ban_state.as_deref(),
            Some("DISABLE" | "SCHEDULE_FOR_DISABLE")
        ) || self.event.as_deref() == Some("ACCOUNT_DELETED")
    }
}

/// A `message_template_status_update`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateStatusUpdate {
    /// `APPROVED`, `REJECTED`, `PAUSED`, `DISABLED`, `FLAGGED`, `REINSTATED`… as Meta wrote it.
    pub event: Option<String>,
    pub template_id: Option<String>,
    pub name: Option<String>,
    pub language: Option<String>,
    pub category: Option<String>,
    /// Meta's reason code (`INVALID_FORMAT`, `NONE`…), never its prose.
    pub reason: Option<String>,
    /// `other_info.title` of a pause (`FIRST_PAUSE`, `SECOND_PAUSE`, `UNPAUSE`…).
    pub title: Option<String>,
}

impl TemplateStatusUpdate {
    /// Whether the template can no longer be sent (or is about to be kept from it).
    pub fn stops_sends(&self) -> bool {
        matches!(
            self.event.as_deref(),
            Some("REJECTED" | "PAUSED" | "DISABLED" | "FLAGGED" | "PENDING_DELETION" | "DELETED")
        )
    }
}

/// A string, or a number written as one (Meta sends template ids as numbers); anything else is
/// absent.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads what `event` says. Never fails: see the module's doc.
pub fn read(event: &FieldEvent) -> AccountChange {
    let Ok(Value::Object(value)) = serde_json::from_str::<Value>(event.raw.get()) else {
        return AccountChange::Other;
    };
    let get = |k: &str| value.get(k);
    match event.field.as_str() {
        QUALITY_FIELD => AccountChange::Quality(QualityUpdate {
            display_phone_number: text(get("display_phone_number")),
            phone_number_id: text(get("phone_number_id")),
            event: text(get("event")),
            limit: text(get("max_daily_conversations_per_business"))
                .or_else(|| text(get("current_limit"))),
        }),
        ACCOUNT_FIELD => {
            let restrictions = match get("restriction_info") {
                Some(Value::Array(items)) => items.iter().filter_map(restriction).collect(),
                // One object instead of a list: taken as a list of one.
                Some(item @ Value::Object(_)) => restriction(item).into_iter().collect(),
                _ => Vec::new(),
            };
            AccountChange::Account(AccountUpdate {
                event: text(get("event")),
                ban_state: text(get("ban_info").and_then(|b| b.get("waba_ban_state"))),
                restrictions,
                violation: text(get("violation_info").and_then(|v| v.get("violation_type"))),
            })
        }
        TEMPLATE_STATUS_FIELD => AccountChange::TemplateStatus(TemplateStatusUpdate {
            event: text(get("event")),
            template_id: text(get("message_template_id")),
            name: text(get("message_template_name")),
            language: text(get("message_template_language")),
            category: text(get("message_template_category")),
            reason: text(get("reason")),
            title: text(get("other_info").and_then(|o| o.get("title"))),
        }),
        _ => AccountChange::Other,
    }
}

fn restriction(item: &Value) -> Option<Restriction> {
    Some(Restriction {
        restriction_type: text(item.get("restriction_type"))?,
        expiration: text(item.get("expiration")),
    })
}

/// The daily limit of a messaging-limit tier (`TIER_1K` → 1,000), `f64::INFINITY` for
/// `TIER_UNLIMITED`; `None` for `TIER_NOT_SET` or a tier we do not know.
pub fn tier_limit(tier: &str) -> Option<f64> {
    let n = tier.strip_prefix("TIER_")?;
    if n == "UNLIMITED" {
        return Some(f64::INFINITY);
    }
    let (digits, scale) = match n.as_bytes().last()? {
        b'K' => (&n[..n.len() - 1], 1_000.0),
        b'M' => (&n[..n.len() - 1], 1_000_000.0),
        _ => (n, 1.0),
    };
    digits.parse::<u32>().ok().map(|d| f64::from(d) * scale)
}

/// A display number's digits alone (`+1 555-078-3881` → `15550783881`), as Meta writes it.
pub fn display_digits(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

/// Whether two display numbers are the same number: their digits are equal (Meta writes
/// `15550783881`, an operator may have stored `+1 555-078-3881`).
pub fn same_display_number(a: &str, b: &str) -> bool {
    // Digit by digit, allocating nothing: ingest asks it of every update it takes.
    let digit = |c: &char| c.is_ascii_digit();
    a.chars().any(|c| digit(&c)) && a.chars().filter(digit).eq(b.chars().filter(digit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn change(field: &str, value: &str) -> AccountChange {
        read(&FieldEvent {
            waba_id: Some("102290129340398".into()),
            field: field.into(),
            raw: RawValue::from_string(value.into()).unwrap(),
        })
    }

    #[test]
    fn a_quality_update_reads_meta_s_examples() {
        let AccountChange::Quality(q) = change(
            QUALITY_FIELD,
            r#"{"display_phone_number":"15550783881","event":"THROUGHPUT_UPGRADE","current_limit":"TIER_UNLIMITED"}"#,
        ) else {
            panic!("not a quality update")
        };
        assert_eq!(q.display_phone_number.as_deref(), Some("15550783881"));
        assert_eq!(q.event.as_deref(), Some("THROUGHPUT_UPGRADE"));
        assert_eq!(q.limit.as_deref(), Some("TIER_UNLIMITED"));
        assert!(!q.flags());
        let AccountChange::Quality(q) = change(
            QUALITY_FIELD,
            r#"{"display_phone_number":"16505551111","event":"FLAGGED","current_limit":"TIER_10K","old_limit":"TIER_10K","max_daily_conversations_per_business":"TIER_2K","new_field":{"x":1}}"#,
        ) else {
            panic!("not a quality update")
        };
        assert!(q.flags());
        assert_eq!(
            q.limit.as_deref(),
            Some("TIER_2K"),
            "the portfolio's limit wins"
        );
    }

    #[test]
    fn an_account_update_reads_bans_restrictions_and_violations() {
        let AccountChange::Account(a) = change(
            ACCOUNT_FIELD,
            r#"{"event":"DISABLED_UPDATE","ban_info":{"waba_ban_state":"DISABLE","waba_ban_date":"April 17, 2025"}}"#,
        ) else {
            panic!("not an account update")
        };
        assert_eq!(a.ban_state.as_deref(), Some("DISABLE"));
        assert!(a.disables());
        let AccountChange::Account(a) = change(
            ACCOUNT_FIELD,
            r#"{"event":"ACCOUNT_RESTRICTION","restriction_info":[{"restriction_type":"RESTRICTED_BIZ_INITIATED_MESSAGING","expiration":"2026-04-19T13:59:20+0000"},{"restriction_type":"RESTRICTED_ADD_PHONE_NUMBER_ACTION"},{"expiration":"x"},7]}"#,
        ) else {
            panic!("not an account update")
        };
        assert_eq!(
            a.restrictions,
            [
                Restriction {
                    restriction_type: "RESTRICTED_BIZ_INITIATED_MESSAGING".into(),
                    expiration: Some("2026-04-19T13:59:20+0000".into()),
                },
                Restriction {
                    restriction_type: "RESTRICTED_ADD_PHONE_NUMBER_ACTION".into(),
                    expiration: None,
                },
            ]
        );
        assert!(!a.disables());
        let AccountChange::Account(a) = change(
            ACCOUNT_FIELD,
            r#"{"event":"ACCOUNT_VIOLATION","violation_info":{"violation_type":"ADULT"}}"#,
        ) else {
            panic!("not an account update")
        };
        assert_eq!(a.violation.as_deref(), Some("ADULT"));
        // A reinstatement lifts nothing by itself here; it is recorded as the latest state.
        let AccountChange::Account(a) = change(
            ACCOUNT_FIELD,
            r#"{"event":"DISABLED_UPDATE","ban_info":{"waba_ban_state":"REINSTATE"}}"#,
        ) else {
            panic!("not an account update")
        };
        assert!(!a.disables());
    }

    #[test]
    fn a_template_status_update_reads_ids_given_as_numbers() {
        let AccountChange::TemplateStatus(t) = change(
            TEMPLATE_STATUS_FIELD,
            r#"{"event":"REJECTED","message_template_id":1689556908129835,"message_template_name":"abandoned_cart","message_template_language":"en","reason":"INVALID_FORMAT","message_template_category":"MARKETING","rejection_info":{"reason":"Your template has parameters…"}}"#,
        ) else {
            panic!("not a template update")
        };
        assert_eq!(t.template_id.as_deref(), Some("1689556908129835"));
        assert_eq!(t.name.as_deref(), Some("abandoned_cart"));
        assert_eq!(t.reason.as_deref(), Some("INVALID_FORMAT"));
        assert!(t.stops_sends());
        let AccountChange::TemplateStatus(t) = change(
            TEMPLATE_STATUS_FIELD,
            r#"{"event":"PAUSED","message_template_id":"7","message_template_name":"promo","message_template_language":"es","reason":"NONE","other_info":{"title":"FIRST_PAUSE","description":"Your WhatsApp message template has been paused."}}"#,
        ) else {
            panic!("not a template update")
        };
        assert_eq!(t.title.as_deref(), Some("FIRST_PAUSE"));
        assert!(t.stops_sends());
    }

    #[test]
    fn shapes_nobody_documented_read_as_absent_never_as_an_error() {
        for value in [
            r#"[1,2]"#,
            r#""text""#,
            r#"null"#,
            r#"{"event":7,"display_phone_number":{"a":1}}"#,
            r#"{"restriction_info":"all","ban_info":[1]}"#,
        ] {
            for field in [
                QUALITY_FIELD,
                ACCOUNT_FIELD,
                TEMPLATE_STATUS_FIELD,
                "security",
            ] {
                let c = change(field, value);
                if let AccountChange::Quality(q) = &c {
                    assert_eq!(q.display_phone_number, None, "{value}");
                }
                if let AccountChange::Account(a) = &c {
                    assert!(
                        a.restrictions.is_empty() && a.ban_state.is_none(),
                        "{value}"
                    );
                }
            }
        }
        assert_eq!(
            change("security", r#"{"event":"PIN_CHANGED"}"#),
            AccountChange::Other
        );
        assert_eq!(change(QUALITY_FIELD, "[1]"), AccountChange::Other);
    }

    #[test]
    fn tiers_read_as_their_daily_limits() {
        assert_eq!(tier_limit("TIER_250"), Some(250.0));
        assert_eq!(tier_limit("TIER_1K"), Some(1_000.0));
        assert_eq!(tier_limit("TIER_2K"), Some(2_000.0));
        assert_eq!(tier_limit("TIER_100K"), Some(100_000.0));
        assert_eq!(tier_limit("TIER_UNLIMITED"), Some(f64::INFINITY));
        assert_eq!(tier_limit("TIER_NOT_SET"), None);
        assert_eq!(tier_limit("UNLIMITED"), None);
        assert_eq!(tier_limit("TIER_"), None);
    }

    #[test]
    fn display_numbers_compare_by_their_digits() {
        assert!(same_display_number("+1 555-078-3881", "15550783881"));
        assert!(!same_display_number("15550783881", "15550783882"));
        assert!(!same_display_number("", ""));
    }
}
