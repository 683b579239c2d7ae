//! The Graph API stand-in: `POST /{version}/{phone_number_id}/messages` and the status webhooks.
//!
//! A send goes through the same gates as at Meta, in this order, and the first that fails answers:
//! 1. `Authorization: Bearer` against [`SimConfig::tokens`] → 401, code 190 (unknown number: 400,
//!    code 100 subcode 33).
//! 2. The body: JSON, `messaging_product: whatsapp`, a recipient (`to` or `recipient`), and for
//!    `type: text` a non-empty `text.body` of at most 4096 characters → 400, code 100 / 131008.
//!    A file (`image`, `document`, `audio`, `video`, `sticker`) needs its object with `id` or
//!    `link`; `interactive` a `button` or `list` object with `body.text` (see `check_object`);
//!    any other `type` → 400, code 100. Recorded with the object (`SentMessage::message`).
//!    A body with `"status": "read"` is mark-read (with `typing_indicator`, typing): recorded,
//!    answered `{"success": true}`, never rate-limited or faulted.
//!    A template send must fit the template it names, when the simulator lists it
//!    ([`crate::templates::check_send`]) → 400, code 132000 / 132012.
//! 3. Queued [`Fault`]s: the first matching fault with sends left takes this send.
//! 4. Throughput per number (`mps`, burst `number_burst`) → 400, code 130429.
//! 5. Pair rate per recipient (`pair_burst`, then one per `pair_period`) → 400, code 131056.
//!    A send refused here still counted against the throughput, as at Meta.
//!
//! An accepted send is recorded and, with a webhook target, followed by signed `sent`,
//! `delivered` and (with read receipts) `read` status webhooks, `status_delay` apart.
//! Both limits are `governor` keyed limiters: GCRA, like wafleet's own limiter, but local — the
//! simulator is one process, which is exactly where an in-memory limiter is right.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{SimConfig, SimState, lock, now_ms};

/// Longest `text.body` Meta accepts, in characters.
const MAX_TEXT_CHARS: usize = 4096;

/// A failure to inject into the next `count` sends that match it.
///
/// | fields | effect |
/// |---|---|
/// | `code` | answer `http_status` with a Graph error of that code (title from Meta's table) |
/// | `code` + `async: true` | accept the send (200 + wamid), then post a `failed` status with that error instead of `sent`/`delivered`/`read` |
/// | `code` + `hang: true` | never answer (until the client gives up or the simulator stops); nothing is sent |
/// | no `code` + `hang: true` | accept and deliver the send (recorded, webhooks), but never answer: the ambiguous send |
/// | no `code`, no `hang` | only `delay_ms`, then handle the send normally |
/// | `raw_body` | answer `http_status` with exactly this body (e.g. a proxy's HTML) |
/// | `cut_body: true` | answer `http_status`, then break the connection partway through the body; nothing is sent |
///
/// `delay_ms` is waited first in every case. `recipient` (the `to` digits without `+`, or the
/// user id) and `phone_number_id` restrict which sends match; `null` matches all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default = "default_http_status")]
    pub http_status: u16,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub recipient: Option<String>,
    #[serde(default)]
    pub phone_number_id: Option<String>,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub hang: bool,
    #[serde(default, rename = "async")]
    pub is_async: bool,
    /// Overrides the error message (default: `(#code) <title>`).
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub raw_body: Option<String>,
    #[serde(default)]
    pub cut_body: bool,
}

fn default_http_status() -> u16 {
    400
}
fn one() -> u32 {
    1
}

impl Fault {
    /// A fault answering the next `count` sends with `code`, at the HTTP status Meta uses for it.
    pub fn code(code: i64, count: u32) -> Self {
        Self {
            code: Some(code),
            http_status: meta_http_status(code),
            count,
            recipient: None,
            phone_number_id: None,
            delay_ms: 0,
            hang: false,
            is_async: false,
            message: None,
            raw_body: None,
            cut_body: false,
        }
    }

    fn matches(&self, phone_number_id: &str, recipient: &str) -> bool {
        self.count > 0
            && self
                .phone_number_id
                .as_deref()
                .is_none_or(|p| p == phone_number_id)
            && self
                .recipient
                .as_deref()
                .is_none_or(|r| r.trim_start_matches('+') == recipient)
    }
}

/// An accepted send, as `GET /_sim/messages` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentMessage {
    pub phone_number_id: String,
    /// `to` exactly as sent (`+573…`), or `None` when the send used `recipient`.
    pub to: Option<String>,
    /// The normalised recipient: `to` without `+`, or the business-scoped user id.
    pub recipient: String,
    /// `type` (`text`, `template`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// `text.body` (empty for other types).
    pub body: String,
    /// The `template` object of a template send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Value>,
    /// The object of a file or interactive send, as sent: `image`'s `{"link", "caption"}`,
    /// `interactive`'s `{"type": "button", "body", "action"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Value>,
    pub preview_url: bool,
    pub context_message_id: Option<String>,
    pub callback_data: Option<String>,
    pub wamid: String,
    /// Unix milliseconds.
    pub received_at: u64,
}

/// A mark-read call, with or without the typing indicator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadReceipt {
    pub phone_number_id: String,
    pub message_id: String,
    pub typing: bool,
    pub received_at: u64,
}

/// One status webhook the simulator posted, and how the receiver answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub wamid: String,
    pub status: String,
    /// The receiver's HTTP status of the last attempt; `None` if it could not be reached.
    pub http_status: Option<u16>,
    pub attempts: u32,
    pub sent_at: u64,
}

/// Per-number throughput and per-(number, recipient) pair limiters.
pub(crate) struct Limits {
    number: Option<DefaultKeyedRateLimiter<String>>,
    pair: Option<DefaultKeyedRateLimiter<(String, String)>>,
}

impl Limits {
    pub(crate) fn new(config: &SimConfig) -> Self {
        let number = NonZeroU32::new(config.mps).map(|mps| {
            let burst = config.number_burst.and_then(NonZeroU32::new).unwrap_or(mps);
            RateLimiter::keyed(Quota::per_second(mps).allow_burst(burst))
        });
        let pair = NonZeroU32::new(config.pair_burst).and_then(|burst| {
            Quota::with_period(config.pair_period).map(|q| RateLimiter::keyed(q.allow_burst(burst)))
        });
        Self { number, pair }
    }
}

pub(crate) async fn messages(
    State(sim): State<SimState>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = check_token(sim.config(), &phone_number_id, "post", &headers) {
        return refused.into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(400, 100, Some("Unexpected body: not JSON"));
    };
    if request["messaging_product"] != "whatsapp" {
        return graph_error(
            400,
            100,
            Some("The parameter messaging_product is required and must be whatsapp"),
        );
    }
    if request["status"] == "read" {
        let answer = mark_read(&sim, phone_number_id, &request);
        let latency = sim.config().read_latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        return answer;
    }
    let send = match Send::parse(&phone_number_id, &request) {
        Ok(send) => send,
        Err(refused) => return refused.into_response(),
    };
    if let Some((status, code, message)) = send
        .template
        .as_ref()
        .and_then(|t| crate::templates::refused_for_status(&sim, t))
    {
        return graph_error(status, code, Some(&message));
    }

    let fault = {
        let mut faults = lock(&sim.0.faults);
        faults
            .iter_mut()
            .find(|f| f.matches(&phone_number_id, &send.recipient))
            .map(|f| {
                f.count -= 1;
                f.clone()
            })
    };
    if let Some(fault) = &fault {
        if fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        }
        if let Some(raw) = &fault.raw_body {
            return (status_code(fault.http_status), raw.clone()).into_response();
        }
        if fault.cut_body {
            use futures::StreamExt;
            // The status line and the start of the body go out first (the pause lets them be
            // written), then the connection breaks.
            let start = futures::stream::iter([Ok::<_, std::io::Error>(
                axum::body::Bytes::from_static(br#"{"error":{"message":"(#"#),
            )]);
            let cut = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(std::io::Error::other("connection cut by the fault"))
            });
            return (
                status_code(fault.http_status),
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(start.chain(cut)),
            )
                .into_response();
        }
        match (fault.code, fault.hang, fault.is_async) {
            (Some(_), true, _) => return hang(&sim).await,
            (Some(code), false, false) => {
                return graph_error(fault.http_status, code, fault.message.as_deref());
            }
            _ => {}
        }
    }

    let limits = lock(&sim.0.limits).clone();
    if let Some(number) = &limits.number
        && number.check_key(&phone_number_id).is_err()
    {
        return graph_error(400, 130429, None);
    }
    if let Some(pair) = &limits.pair
        && pair
            .check_key(&(phone_number_id.clone(), send.recipient.clone()))
            .is_err()
    {
        return graph_error(400, 131056, None);
    }

    let message = send.accept(&sim, phone_number_id);
    let answer = json!({
        "messaging_product": "whatsapp",
        "contacts": [contact(&message)],
        "messages": [{"id": message.wamid}],
    });
    lock(&sim.0.messages).push(message.clone());
    let failure = fault
        .as_ref()
        .filter(|f| f.is_async)
        .and_then(|f| f.code.map(|code| (code, f.message.clone())));
    spawn_statuses(&sim, message, failure);
    if fault.as_ref().is_some_and(|f| f.hang) {
        return hang(&sim).await;
    }
    (StatusCode::OK, axum::Json(answer)).into_response()
}

/// Never answers, until the simulator shuts down (then 503, which no client will still be
/// waiting for). The client's timeout is what this exercises.
async fn hang(sim: &SimState) -> Response {
    sim.0.shutdown.cancelled().await;
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

/// The bearer token against [`SimConfig::tokens`], for a `verb` (`post`, `get`) request on
/// `phone_number_id`: none → 190; an unknown number → 100 subcode 33; a wrong token → 190,
/// quoting it when it is not shaped like Meta's (`EAA…`), as Meta's "Malformed access token"
/// does.
pub(crate) fn check_token(
    config: &SimConfig,
    phone_number_id: &str,
    verb: &str,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let Some(bearer) = crate::bearer(headers) else {
        return Err(Refusal::new(
            401,
            190,
            Some(
                "An active access token must be used to query information about the current user.",
            ),
        ));
    };
    if config.tokens.is_empty() {
        return Ok(());
    }
    match config.tokens.get(phone_number_id) {
        None => Err(Refusal::with(
            400,
            100,
            Some(33),
            Some(&format!(
                "Unsupported {verb} request. Object with ID '{phone_number_id}' does not exist"
            )),
        )),
        Some(expected) if expected == bearer => Ok(()),
        Some(_) if !bearer.starts_with("EAA") => Err(Refusal::new(
            401,
            190,
            Some(&format!("Malformed access token {bearer}")),
        )),
        Some(_) => Err(Refusal::with(
            401,
            190,
            Some(463),
            Some("Error validating access token: Session has expired or the token is invalid."),
        )),
    }
}

fn mark_read(sim: &SimState, phone_number_id: String, request: &Value) -> Response {
    let Some(message_id) = request["message_id"].as_str().filter(|s| !s.is_empty()) else {
        return graph_error(
            400,
            131008,
            Some("(#131008) Required parameter is missing: message_id"),
        );
    };
    lock(&sim.0.reads).push(ReadReceipt {
        phone_number_id,
        message_id: message_id.to_owned(),
        typing: request
            .get("typing_indicator")
            .is_some_and(|t| !t.is_null()),
        received_at: now_ms(),
    });
    (StatusCode::OK, axum::Json(json!({"success": true}))).into_response()
}

/// A validated send, before it is accepted.
struct Send {
    to: Option<String>,
    recipient: String,
    kind: String,
    body: String,
    template: Option<Value>,
    message: Option<Value>,
    preview_url: bool,
    context_message_id: Option<String>,
    callback_data: Option<String>,
}

/// The media types Meta sends (not in our reference; from Meta's public "Media messages" page).
const MEDIA_TYPES: [&str; 5] = ["image", "document", "audio", "video", "sticker"];

/// A file's or an interactive message's object, checked the way Meta refuses the shapes that
/// are cheap to tell: a file needs `id` or `link` (not both), a caption only where Meta shows
/// one; an interactive message is `button` (1–3 reply buttons) or `list` (a `button` and
/// sections with rows) with a `body.text`. Not in our reference; Meta's public pages answer
/// these with code 100 (invalid parameter) or 131008 (a required parameter missing).
fn check_object(kind: &str, object: &Value) -> Result<(), Refusal> {
    let missing = |what: &str| {
        Refusal::new(
            400,
            131008,
            Some(&format!("(#131008) Required parameter is missing: {what}")),
        )
    };
    let invalid =
        |what: &str| Refusal::new(400, 100, Some(&format!("(#100) Invalid parameter: {what}")));
    if !object.is_object() {
        return Err(missing(kind));
    }
    if MEDIA_TYPES.contains(&kind) {
        let has = |field: &str| object[field].as_str().is_some_and(|v| !v.is_empty());
        return match (has("id"), has("link")) {
            (false, false) => Err(missing(&format!("{kind}.id or {kind}.link"))),
            (true, true) => Err(invalid(&format!("{kind}: id and link together"))),
            _ if object.get("caption").is_some() && matches!(kind, "audio" | "sticker") => {
                Err(invalid(&format!("{kind}.caption")))
            }
            _ if object.get("filename").is_some() && kind != "document" => {
                Err(invalid(&format!("{kind}.filename")))
            }
            _ => Ok(()),
        };
    }
    // interactive
    if object["body"]["text"].as_str().is_none_or(str::is_empty) {
        return Err(missing("interactive.body.text"));
    }
    let action = &object["action"];
    match object["type"].as_str() {
        Some("button") => {
            let buttons = action["buttons"].as_array().map_or(0, Vec::len);
            if !(1..=3).contains(&buttons) {
                return Err(invalid("interactive.action.buttons"));
            }
            Ok(())
        }
        Some("list") => {
            if action["button"].as_str().is_none_or(str::is_empty) {
                return Err(missing("interactive.action.button"));
            }
            let rows: usize = action["sections"].as_array().map_or(0, |s| {
                s.iter()
                    .map(|s| s["rows"].as_array().map_or(0, Vec::len))
                    .sum()
            });
            if !(1..=10).contains(&rows) {
                return Err(invalid("interactive.action.sections"));
            }
            Ok(())
        }
        Some(_) => Err(invalid("interactive.type")),
        None => Err(missing("interactive.type")),
    }
}

impl Send {
    fn parse(phone_number_id: &str, request: &Value) -> Result<Self, Refusal> {
        let to = request["to"].as_str().filter(|s| !s.is_empty());
        let user_id = request["recipient"].as_str().filter(|s| !s.is_empty());
        let recipient = match (to, user_id) {
            (Some(to), _) => {
                let digits = to.trim_start_matches('+');
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Refusal::new(
                        400,
                        131009,
                        Some("(#131009) Parameter value is not valid: to"),
                    ));
                }
                if digits == phone_number_id {
                    return Err(Refusal::new(400, 131021, None));
                }
                digits.to_owned()
            }
            (None, Some(id)) => id.to_owned(),
            (None, None) => {
                return Err(Refusal::new(
                    400,
                    131008,
                    Some("(#131008) Required parameter is missing: to"),
                ));
            }
        };
        let kind = request["type"].as_str().unwrap_or("text").to_owned();
        let (body, preview_url) = if kind == "text" {
            let Some(body) = request["text"]["body"].as_str().filter(|b| !b.is_empty()) else {
                return Err(Refusal::new(
                    400,
                    131008,
                    Some("(#131008) Required parameter is missing: text.body"),
                ));
            };
            if body.chars().count() > MAX_TEXT_CHARS {
                return Err(Refusal::new(
                    400,
                    100,
                    Some("(#100) Param text.body must be at most 4096 characters long."),
                ));
            }
            let preview = request["text"]["preview_url"].as_bool().unwrap_or(false);
            (body.to_owned(), preview)
        } else {
            (String::new(), false)
        };
        let message = if MEDIA_TYPES.contains(&kind.as_str()) || kind == "interactive" {
            let object = &request[kind.as_str()];
            check_object(&kind, object)?;
            Some(object.clone())
        } else if !matches!(kind.as_str(), "text" | "template") {
            return Err(Refusal::new(
                400,
                100,
                Some("(#100) Invalid parameter: type"),
            ));
        } else {
            None
        };
        let template = if kind == "template" {
            let t = &request["template"];
            for (value, name) in [
                (&t["name"], "name"),
                (&t["language"]["code"], "language.code"),
            ] {
                if value.as_str().is_none_or(str::is_empty) {
                    return Err(Refusal::new(
                        400,
                        131008,
                        Some(&format!(
                            "(#131008) Required parameter is missing: template.{name}"
                        )),
                    ));
                }
            }
            if let Err((code, message)) = crate::templates::check_send(t) {
                return Err(Refusal::new(400, code, Some(message)));
            }
            Some(t.clone())
        } else {
            None
        };
        Ok(Self {
            to: to.map(str::to_owned),
            recipient,
            kind,
            body,
            template,
            message,
            preview_url,
            context_message_id: request["context"]["message_id"].as_str().map(str::to_owned),
            callback_data: request["biz_opaque_callback_data"]
                .as_str()
                .map(str::to_owned),
        })
    }

    fn accept(self, sim: &SimState, phone_number_id: String) -> SentMessage {
        SentMessage {
            phone_number_id,
            to: self.to,
            recipient: self.recipient,
            kind: self.kind,
            body: self.body,
            template: self.template,
            message: self.message,
            preview_url: self.preview_url,
            context_message_id: self.context_message_id,
            callback_data: self.callback_data,
            wamid: format!("wamid.SIM{}", sim.next_id()),
            received_at: now_ms(),
        }
    }
}

fn contact(m: &SentMessage) -> Value {
    match &m.to {
        Some(to) => json!({"input": to, "wa_id": wa_id_of(&m.recipient)}),
        None => json!({"input": m.recipient, "user_id": m.recipient}),
    }
}

/// How Meta names the customer a phone reaches: the digits sent, except that a Mexican mobile
/// dialled as 52 + ten digits belongs to an account named 521 + the ten digits, as many still are.
pub fn wa_id_of(recipient: &str) -> String {
    let mexican = recipient.len() == 12
        && recipient.starts_with("52")
        && !recipient[2..].starts_with('1')
        && recipient.bytes().all(|b| b.is_ascii_digit());
    if mexican {
        format!("521{}", &recipient[2..])
    } else {
        recipient.to_string()
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The HTTP status Meta's error table lists for a code (reference C.2); 400 when it lists none.
pub(crate) fn meta_http_status(code: i64) -> u16 {
    match code {
        0 | 190 => 401,
        10 | 200..=299 | 368 | 131005 | 131031 => 403,
        3 | 131000 | 131016 | 131045 | 131057 | 133000 => 500,
        2 | 133004 => 503,
        _ => 400,
    }
}

/// Meta's title for the codes tests inject most; a generic one for the rest.
fn title(code: i64) -> &'static str {
    match code {
        0 => "AuthException",
        1 => "API Unknown",
        2 => "API Service",
        4 => "API Too Many Calls",
        10 => "Permission Denied",
        100 => "Invalid parameter",
        190 => "Access token has expired",
        80007 => "Rate limit issues",
        130429 => "Rate limit hit",
        130472 => "User's number is part of an experiment",
        131000 => "Something went wrong",
        131008 => "Required parameter is missing",
        131009 => "Parameter value is not valid",
        131016 => "Service unavailable",
        131021 => "Recipient cannot be sender",
        131026 => "Message undeliverable",
        131047 => "Re-engagement message",
        131048 => "Spam rate limit hit",
        131049 => "This message was not delivered to maintain healthy ecosystem engagement.",
        131056 => "(Business Account, Consumer Account) pair rate limit hit",
        131057 => "Account in maintenance mode",
        133004 => "Server temporarily unavailable",
        _ => "Simulated error",
    }
}

fn details(code: i64) -> &'static str {
    match code {
        130429 => {
            "Message failed to send because there were too many messages sent from this phone number in a short period of time"
        }
        131056 => {
            "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time."
        }
        131047 => {
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number."
        }
        131026 => "Message Undeliverable.",
        _ => "Simulated by wafleet-sim.",
    }
}

fn graph_error(http_status: u16, code: i64, message: Option<&str>) -> Response {
    Refusal::new(http_status, code, message).into_response()
}

/// A Graph API error answer (reference C.1), built where a check fails and rendered once.
pub(crate) struct Refusal {
    http_status: u16,
    code: i64,
    subcode: Option<i64>,
    message: Option<String>,
}

impl Refusal {
    fn new(http_status: u16, code: i64, message: Option<&str>) -> Self {
        Self::with(http_status, code, None, message)
    }

    fn with(http_status: u16, code: i64, subcode: Option<i64>, message: Option<&str>) -> Self {
        Self {
            http_status,
            code,
            subcode,
            message: message.map(str::to_owned),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let code = self.code;
        let message = self
            .message
            .unwrap_or_else(|| format!("(#{code}) {}", title(code)));
        let mut error = json!({
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details(code)},
            "fbtrace_id": format!("SIM{:x}", rand::random::<u64>()),
        });
        if let Some(subcode) = self.subcode {
            error["error_subcode"] = json!(subcode);
        }
        (
            status_code(self.http_status),
            axum::Json(json!({"error": error})),
        )
            .into_response()
    }
}

/// Posts the statuses of an accepted message in the background: `sent`, `delivered`, `read`, or a
/// single `failed` with `failure`'s code.
fn spawn_statuses(sim: &SimState, message: SentMessage, failure: Option<(i64, Option<String>)>) {
    let Some(target) = sim.config().webhook.clone() else {
        return;
    };
    let sim = sim.clone();
    tokio::spawn(async move {
        let statuses: Vec<Value> = match failure {
            Some((code, text)) => vec![failed_status(&message, code, text)],
            None => {
                let mut steps = vec!["sent", "delivered"];
                if sim.config().read_receipts {
                    steps.push("read");
                }
                steps.into_iter().map(|s| status(&message, s)).collect()
            }
        };
        for status in statuses {
            tokio::select! {
                _ = tokio::time::sleep(sim.config().status_delay) => {}
                _ = sim.0.shutdown.cancelled() => return,
            }
            post_status(&sim, &target, &message, status).await;
        }
    });
}

/// Delivers one status webhook, retrying briefly like Meta does (Meta keeps trying for days; a
/// simulator that did would outlive the test).
async fn post_status(
    sim: &SimState,
    target: &crate::WebhookTarget,
    message: &SentMessage,
    status: Value,
) {
    let name = status["status"].as_str().unwrap_or_default().to_owned();
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": sim.config().waba_id, "changes": [{"value": {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": sim.config().display_phone_number,
                "phone_number_id": message.phone_number_id,
            },
            "statuses": [status],
        }, "field": "messages"}]}],
    }))
    .expect("a JSON value serialises");
    let signature = wafleet_core::signature::sign(&body, target.app_secret.as_bytes());
    let mut http_status = None;
    let mut attempts = 0;
    for backoff in [100, 500, 2000] {
        attempts += 1;
        let answer = sim
            .0
            .http
            .post(&target.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-hub-signature-256", &signature)
            .body(body.clone())
            .send()
            .await;
        http_status = answer.ok().map(|r| r.status().as_u16());
        if http_status == Some(200) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
            _ = sim.0.shutdown.cancelled() => break,
        }
    }
    if http_status != Some(200) {
        tracing::warn!(status = %name, ?http_status, "status webhook not accepted");
    }
    lock(&sim.0.webhooks).push(WebhookDelivery {
        wamid: message.wamid.clone(),
        status: name,
        http_status,
        attempts,
        sent_at: now_ms(),
    });
}

fn unix_seconds() -> String {
    (now_ms() / 1000).to_string()
}

fn recipient_fields(m: &SentMessage, status: &mut Value) {
    if m.to.is_some() {
        status["recipient_id"] = json!(wa_id_of(&m.recipient));
    } else {
        status["recipient_user_id"] = json!(m.recipient);
    }
    if let Some(data) = &m.callback_data {
        status["biz_opaque_callback_data"] = json!(data);
    }
}

/// A success status (reference A.5), with `conversation` on `sent` and `pricing` on `sent` and
/// `delivered`, like a ≤ v23.0 webhook of a reply inside the customer service window.
fn status(m: &SentMessage, name: &str) -> Value {
    let now = unix_seconds();
    let mut status = json!({"id": m.wamid, "status": name, "timestamp": now});
    recipient_fields(m, &mut status);
    if name == "sent" {
        let expires = (now_ms() / 1000 + 24 * 3600).to_string();
        status["conversation"] = json!({
            "id": format!("{:032x}", rand::random::<u128>()),
            "expiration_timestamp": expires,
            "origin": {"type": "service"},
        });
    }
    if name != "read" {
        status["pricing"] = json!({
            "billable": false,
            "pricing_model": "PMP",
            "type": "free_customer_service",
            "category": "service",
        });
    }
    status
}

/// A `failed` status carrying `code` (reference A.5, Meta's verbatim shape).
fn failed_status(m: &SentMessage, code: i64, message: Option<String>) -> Value {
    let mut status = json!({
        "id": m.wamid,
        "status": "failed",
        "timestamp": unix_seconds(),
        "errors": [{
            "code": code,
            "title": title(code),
            "message": message.unwrap_or_else(|| title(code).to_owned()),
            "error_data": {"details": details(code)},
            "href": "/documentation/business-messaging/whatsapp/support/error-codes",
        }],
    });
    recipient_fields(m, &mut status);
    status
}
