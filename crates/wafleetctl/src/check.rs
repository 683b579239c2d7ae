//! `wafleetctl channel check`: whether Meta takes a channel's stored access token for its number,
//! asked at setup time instead of learnt from the first customer's reply (which otherwise stays
//! pending while the channel pauses on error 190).
//!
//! One call, `GET /{version}/{phone_number_id}` with the number's own token, through the workers'
//! [`GraphClient`] and settings (`WAFLEET_GRAPH_BASE_URL`, `WAFLEET_GRAPH_API_VERSION`,
//! `WAFLEET_GRAPH_TIMEOUT_MS`). A refusal is worded from its classification
//! ([`wafleet_core::graph_error`]) and code; Meta's own message and details are never shown, as
//! a 190's quotes the token ("Malformed access token …"), and neither is the token.
//!
//! With the channel's business account stored (`--waba-id`), a second call,
//! `GET /{version}/{waba_id}/subscribed_apps`, says whether the app is subscribed to the
//! account's webhooks: Meta sends a number's messages and statuses only to the apps subscribed
//! to its account, so a channel whose app is not gets nothing, however right its token. That
//! endpoint is beyond our reference (which names it only among the rate-limited ones); its
//! answer is Meta's public Graph API reference, "WhatsApp Business Account Subscribed Apps"
//! (<https://developers.facebook.com/docs/graph-api/reference/whats-app-business-account/subscribed_apps/>):
//! `{"data": [{"whatsapp_business_api_data": {"id", "name", "link"}}]}`. No app subscribed, or
//! not the channel's (`--app-id`), fails the check; a refusal of that list (a token without
//! `whatsapp_business_management`) is said, not failed: the number itself answered.

use anyhow::Context;
use wafleet::crypto::Cipher;
use wafleet::db::PgPool;
use wafleet::graph::{
    GraphCallError, GraphClient, PhoneNumber, SubscribedApp, UNPARSED_ERROR_CODE,
};
use wafleet::stages::process::GraphSettings;
use wafleet::store::channels;
use wafleet_core::account::display_digits;
use wafleet_core::graph_error::{
    ErrorClass, GraphError, UNKNOWN_OBJECT_SUBCODE, config_meaning, new_token_fixes,
};

/// Checks channel `pnid` with Meta: the report's lines when Meta answers for the number, or why
/// it does not (an error: the command exits 1).
pub async fn check(pool: &PgPool, cipher: &Cipher, pnid: &str) -> anyhow::Result<Vec<String>> {
    let asked = [pnid.to_string()];
    let Some(stored) = channels::summaries(pool, &asked).await?.pop() else {
        anyhow::bail!("no channel {pnid}");
    };
    let token = channels::access_token(pool, cipher, pnid)
        .await
        .with_context(|| {
            format!("channel {pnid}'s access token does not decrypt with WAFLEET_ENCRYPTION_KEY")
        })?
        .with_context(|| {
            format!(
                "channel {pnid} has no access token to check: add one (wafleetctl channel add \
                 --phone-number-id {pnid} --access-token …)"
            )
        })?;
    let settings = GraphSettings::from_env()?;
    let graph = GraphClient::new(&settings.base_url, &settings.version, settings.timeout);
    let number = graph
        .phone_number(token.expose(), pnid)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "channel {pnid} failed its check: {}",
                failure(pnid, &settings.base_url, &e)
            )
        })?;
    let mut lines = report(&stored, &number);
    if let Some(waba) = &stored.waba_id {
        match graph.subscribed_apps(token.expose(), waba).await {
            Ok(apps) => match subscription(waba, stored.app_id.as_deref(), &apps) {
                Ok(line) => lines.push(line),
                Err(failed) => anyhow::bail!(
                    "channel {pnid} failed its check: {failed}\n{}",
                    lines.join("\n")
                ),
            },
            Err(e) => lines.push(format!(
                "  webhooks: not checked: {}",
                list_failure(waba, &settings.base_url, &e)
            )),
        }
    }
    Ok(lines)
}

/// Whether the channel's app is among those subscribed to business account `waba`'s webhooks:
/// the report's line, or why the check fails (with what fixes it).
fn subscription(
    waba: &str,
    app_id: Option<&str>,
    apps: &[SubscribedApp],
) -> Result<String, String> {
    let ids: Vec<&str> = apps.iter().filter_map(|a| a.id.as_deref()).collect();
    let fix = format!(
        "run POST /{waba}/subscribed_apps with a token of the app (Meta's embedded signup does \
         it); until then Meta sends the number's webhooks nowhere"
    );
    match app_id {
        _ if apps.is_empty() => Err(format!(
            "webhooks: app not subscribed to WABA {waba} — {fix}"
        )),
        Some(app) if ids.contains(&app) => {
            Ok(format!("  webhooks: app {app} subscribed to WABA {waba}"))
        }
        Some(app) => Err(format!(
            "webhooks: app {app} not subscribed to WABA {waba} (subscribed: {}) — {fix}",
            if ids.is_empty() {
                "apps without an id".to_string()
            } else {
                ids.join(", ")
            }
        )),
        None => Ok(format!(
            "  webhooks: WABA {waba} has {} app(s) subscribed ({}); store the channel's --app-id \
             to check that one is its app",
            apps.len(),
            ids.join(", ")
        )),
    }
}

/// Why the business account's subscribed apps were not listed: Meta's code, never its words.
fn list_failure(waba: &str, base_url: &str, e: &GraphCallError) -> String {
    match e {
        GraphCallError::Transport { reason, .. } => {
            format!("Meta's Graph API at {base_url} gave no usable answer ({reason})")
        }
        GraphCallError::Rejected {
            http_status, error, ..
        } => format!(
            "Meta did not list WABA {waba}'s subscribed apps ({}); the token needs the \
             whatsapp_business_management permission for it",
            code_text(*http_status, error)
        ),
    }
}

/// What Meta has for the number, beside what is stored.
fn report(stored: &channels::Summary, number: &PhoneNumber) -> Vec<String> {
    let pnid = &stored.phone_number_id;
    let unknown = || "(not given by Meta)".to_string();
    let display = match (&number.display_phone_number, &stored.display_phone_number) {
        (Some(meta), Some(ours)) if display_digits(meta) == display_digits(ours) => {
            format!("{meta} (stored {ours}: matches)")
        }
        (Some(meta), Some(ours)) => format!(
            "{meta} (stored {ours}: differs; is {pnid} the number meant? `channel add \
             --display-phone-number` corrects what is stored)"
        ),
        (Some(meta), None) => format!("{meta} (none stored)"),
        (None, _) => unknown(),
    };
    let name = match &number.verified_name {
        Some(meta) if stored.name.trim().is_empty() => format!("{meta} (no name stored)"),
        Some(meta) if meta.trim() == stored.name.trim() => {
            format!("{meta} (stored name {:?}: matches)", stored.name)
        }
        Some(meta) => format!(
            "{meta} (stored name {:?}: differs; the stored name is wafleet's label only)",
            stored.name
        ),
        None => unknown(),
    };
    let mut lines = vec![
        format!("channel {pnid}: ok, Meta answers for the number with its stored access token"),
        format!("  display number: {display}"),
        format!("  verified name: {name}"),
        format!(
            "  quality rating: {}",
            number.quality_rating.clone().unwrap_or_else(unknown)
        ),
    ];
    if stored.waba_id.is_none() {
        lines.push(
            "  webhooks: not checked: no WABA stored (channel add --waba-id) to ask Meta about"
                .into(),
        );
    }
    lines
}

/// Why the check failed, for an operator: what is wrong and what fixes it, with Meta's code and
/// `fbtrace_id` (for Meta support), never Meta's message.
fn failure(pnid: &str, base_url: &str, e: &GraphCallError) -> String {
    match e {
        GraphCallError::Transport {
            reason,
            maybe_sent: false,
        } => format!("Meta's Graph API could not be reached at {base_url} ({reason})"),
        GraphCallError::Transport { reason, .. } => {
            format!("Meta's Graph API at {base_url} gave no usable answer ({reason})")
        }
        GraphCallError::Rejected {
            http_status,
            error,
            class,
        } => format!(
            "{} ({})",
            refusal(pnid, error, *class),
            code_text(*http_status, error)
        ),
    }
}

fn refusal(pnid: &str, error: &GraphError, class: ErrorClass) -> String {
    let code = error.code;
    if code == UNPARSED_ERROR_CODE {
        return format!(
            "the answer is no Graph API error (a proxy's page?), so nothing says whether \
             {pnid} works"
        );
    }
    if new_token_fixes(code) {
        // 190 is also a token Meta cannot parse, not only an expired one.
        return format!(
            "the access token is expired or invalid: store a new one (wafleetctl channel add \
             --phone-number-id {pnid} --access-token …)"
        );
    }
    if code == 33 || (code == 100 && error.subcode == Some(UNKNOWN_OBJECT_SUBCODE)) {
        return format!(
            "Meta does not know number {pnid}, or its access token may not use it: check the \
             phone_number_id in WhatsApp Manager, and that the token's system user was given \
             the number's WhatsApp account"
        );
    }
    match class {
        ErrorClass::Config => format!("{}: fix it at Meta", config_meaning(code)),
        ErrorClass::Throttled { .. } => {
            "Meta is rate-limiting the calls: run the check again later".into()
        }
        ErrorClass::Transient => "Meta had a temporary error: run the check again".into(),
        ErrorClass::Permanent | ErrorClass::ReEngagement => "Meta refused the request".into(),
    }
}

/// `Meta's error 190, HTTP 401, fbtrace_id …`.
fn code_text(http_status: u16, error: &GraphError) -> String {
    let mut text = if error.code == UNPARSED_ERROR_CODE {
        format!("HTTP {http_status}")
    } else {
        format!("Meta's error {}", error.code)
    };
    if let Some(subcode) = error.subcode {
        text.push_str(&format!(" subcode {subcode}"));
    }
    if error.code != UNPARSED_ERROR_CODE {
        text.push_str(&format!(", HTTP {http_status}"));
    }
    if let Some(trace) = &error.fbtrace_id {
        text.push_str(&format!(", fbtrace_id {trace}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: i64, subcode: Option<i64>, http_status: u16) -> GraphCallError {
        let error = GraphError {
            code,
            subcode,
            message: "Malformed access token EAAGsecret".into(),
            kind: Some("OAuthException".into()),
            details: Some("details quoting EAAGsecret".into()),
            fbtrace_id: Some("AbC123".into()),
            is_transient: None,
        };
        GraphCallError::Rejected {
            http_status,
            class: error.class(http_status),
            error,
        }
    }

    #[test]
    fn each_refusal_says_what_is_wrong_with_the_code_and_never_metas_words() {
        let base = "https://graph.facebook.com";
        for (e, says) in [
            (
                rejected(190, None, 401),
                "the access token is expired or invalid",
            ),
            (
                rejected(0, None, 401),
                "the access token is expired or invalid",
            ),
            (rejected(100, Some(33), 400), "Meta does not know number 1"),
            (rejected(10, None, 403), "permission denied: fix it at Meta"),
            (rejected(200, None, 403), "permission was not granted"),
            (rejected(4, None, 400), "rate-limiting"),
            (rejected(131000, None, 500), "temporary error"),
            (rejected(100, None, 400), "Meta refused the request"),
            (
                rejected(UNPARSED_ERROR_CODE, None, 502),
                "no Graph API error",
            ),
        ] {
            let text = failure("1", base, &e);
            assert!(text.contains(says), "{text}");
            assert!(!text.contains("EAAGsecret"), "{text}");
            let GraphCallError::Rejected { error, .. } = &e else {
                unreachable!()
            };
            if error.code != UNPARSED_ERROR_CODE {
                assert!(text.contains(&format!("error {}", error.code)), "{text}");
                assert!(text.contains("fbtrace_id AbC123"), "{text}");
            }
        }
        let unreachable = GraphCallError::Transport {
            reason: "connection refused".into(),
            maybe_sent: false,
        };
        assert_eq!(
            failure("1", base, &unreachable),
            "Meta's Graph API could not be reached at https://graph.facebook.com (connection \
             refused)"
        );
    }

    #[test]
    fn the_report_says_whether_meta_has_what_is_stored() {
        let stored = |display: Option<&str>, name: &str| channels::Summary {
            phone_number_id: "1".into(),
            waba_id: None,
            app_id: None,
            display_phone_number: display.map(str::to_owned),
            name: name.into(),
            enabled: true,
            bot_mode: "on".into(),
            app_secrets: 1,
            verify_token: true,
            access_token: true,
            phone_allowlist: vec![],
            updated_at: chrono::Utc::now(),
            sends_paused: channels::SendsPaused(None),
        };
        let meta = PhoneNumber {
            display_phone_number: Some("+1 555-000-0000".into()),
            verified_name: Some("Tienda Sol".into()),
            quality_rating: None,
        };
        let lines = report(&stored(Some("15550000000"), "Tienda Sol"), &meta);
        assert_eq!(
            lines[1..],
            [
                "  display number: +1 555-000-0000 (stored 15550000000: matches)",
                "  verified name: Tienda Sol (stored name \"Tienda Sol\": matches)",
                "  quality rating: (not given by Meta)",
                // No business account stored: the subscription cannot be asked about.
                "  webhooks: not checked: no WABA stored (channel add --waba-id) to ask Meta about",
            ]
        );
        let lines = report(&stored(None, ""), &meta);
        assert_eq!(lines[1], "  display number: +1 555-000-0000 (none stored)");
        assert_eq!(lines[2], "  verified name: Tienda Sol (no name stored)");
        let lines = report(&stored(Some("15550000001"), "Sol"), &meta);
        assert!(
            lines[1].contains("stored 15550000001: differs"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("stored name \"Sol\": differs"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_app_must_be_among_those_subscribed_to_the_business_account() {
        let app = |id: &str| SubscribedApp {
            id: Some(id.into()),
            name: None,
        };
        let fails = |r: Result<String, String>| r.expect_err("a failed check");
        let none = fails(subscription("42", Some("7"), &[]));
        assert!(
            none.starts_with(
                "webhooks: app not subscribed to WABA 42 — run POST /42/subscribed_apps"
            ),
            "{none}"
        );
        let other = fails(subscription("42", Some("7"), &[app("8")]));
        assert!(
            other.starts_with(
                "webhooks: app 7 not subscribed to WABA 42 (subscribed: 8) — run POST"
            ),
            "{other}"
        );
        assert_eq!(
            subscription("42", Some("7"), &[app("8"), app("7")]),
            Ok("  webhooks: app 7 subscribed to WABA 42".into())
        );
        let unknown = subscription("42", None, &[app("8")]).unwrap();
        assert!(unknown.contains("1 app(s) subscribed (8)"), "{unknown}");
        assert!(fails(subscription("42", None, &[])).contains("app not subscribed"));
    }

    #[test]
    fn numbers_match_whatever_their_notation() {
        assert_eq!(
            display_digits("+1 555-555-5555"),
            display_digits("15555555555")
        );
        assert_ne!(
            display_digits("+1 555-555-5555"),
            display_digits("15555555556")
        );
    }
}
