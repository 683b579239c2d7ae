//! The WhatsApp Cloud API (Graph API) client: text sends (and templates, agents' files, buttons
//! and lists), mark-read and the typing indicator,
//! and the reads beside them (templates, customers' media, a business number).
//!
//! Owns the HTTP exchange only: building the request exactly as Meta documents it (reference B.2,
//! B.3), and turning whatever came back into an outcome the sender can act on. It does not retry,
//! wait, rate-limit (see [`crate::ratelimit`]) or decide what a failure means for the job: the class
//! of an error comes from [`wafleet_core::graph_error`], the one table shared with status webhooks.
//!
//! # Outcomes of a send
//! The important split is whether Meta may have *received* the request, because a resend of a
//! message Meta did accept reaches the customer twice:
//! - [`SendResult::Accepted`]: 2xx with a wamid. Accepted only; delivery arrives as status webhooks.
//! - [`SendResult::Rejected`]: Meta answered with an error; classified on `error.code`. A non-2xx
//!   whose body is not a Graph error (a proxy's HTML page, an empty 502) gets a synthetic
//!   [`GraphError`] with code [`UNPARSED_ERROR_CODE`] and is classified by HTTP status alone:
//!   429 and 5xx are `Transient`, anything else `Permanent` (the fallback of
//!   [`wafleet_core::graph_error::classify`] for codes outside Meta's table). A non-2xx whose
//!   body broke off before its end is `Transient` whatever its status: its code is unknown, and
//!   Meta's throttles come as 400s.
//! - [`SendResult::NotSent`]: the connection was never established (refused, DNS, TLS handshake,
//!   connect timeout). The request certainly did not reach Meta: safe to retry.
//! - [`SendResult::Ambiguous`]: anything after the connection was up — request timeout, connection
//!   reset, a 2xx we cannot read a wamid from. Meta may have accepted it: the caller must not resend
//!   blindly (wait for a status webhook carrying its `biz_opaque_callback_data`, or give up).
//!
//! # What is never logged
//! Access tokens (the `Authorization` header is marked sensitive) and message bodies (customer
//! text). Logs carry the phone number id, HTTP status, error code and `fbtrace_id`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;
use wafleet_core::graph_error::{ErrorClass, GraphError, classify, parse_graph_error};

/// Meta's production Graph API host.
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
/// The Graph API version used unless configured otherwise (reference B.4: available until 2027-10).
pub const DEFAULT_VERSION: &str = "v23.0";

/// `code` of the synthetic [`GraphError`] built for a non-2xx answer whose body is not a Graph
/// error. Negative so it can never collide with a code of Meta's table (0 is "AuthException").
pub const UNPARSED_ERROR_CODE: i64 = -1;

/// Longest time to establish a connection, whatever the request timeout. Kept separate so a
/// connect-phase failure is recognisably [`SendResult::NotSent`] rather than an ambiguous timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Read receipts on the wire at once per process, unless configured
/// (`WAFLEET_MARK_READ_MAX_IN_FLIGHT`). Each holds an HTTP/1 connection of its own, about 30 KiB
/// in hyper (its request channel, read and write buffers) before TLS: unbounded, a burst of
/// 1,200 new messages opened 300-770 connections beside the 1,200 model calls and took the LLM
/// worker's peak RSS from about 72 MB to 77-94 MB. 64 receipts at Meta's ~150 ms make about 400
/// a second.
pub const DEFAULT_RECEIPTS_IN_FLIGHT: usize = 64;

/// How long a read receipt waits for its place before it is dropped (counted in
/// `wafleet_mark_read_skipped_total`): past it the model's answer may already be out, and a
/// typing indicator shown after the answer stays up for 25 s. A later receipt of the same thread
/// marks this message read too (reference B.3).
pub const RECEIPT_WAIT: Duration = Duration::from_secs(2);

/// What became of a read receipt sent by [`GraphClient::mark_read_in_background`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Sent,
    /// Meta refused it or could not be reached (counted in `wafleet_mark_read_errors_total`).
    Failed,
    /// No place came within [`RECEIPT_WAIT`] (counted in `wafleet_mark_read_skipped_total`).
    Skipped,
}

/// A Graph API client. Cheap to clone: every clone shares one connection pool.
#[derive(Clone)]
pub struct GraphClient {
    /// One pool of keep-alive connections to Meta for the whole process: TLS handshakes to
    /// graph.facebook.com cost more than the send itself.
    http: reqwest::Client,
    /// `https://graph.facebook.com`, or the simulator's address; no trailing slash.
    base_url: String,
    /// `v23.0`: a config value because Meta retires versions about two years after release.
    version: String,
    /// Places for read receipts on the wire ([`DEFAULT_RECEIPTS_IN_FLIGHT`]), shared by clones.
    receipts: Arc<Semaphore>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base_url", &self.base_url)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// One text message to send.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingText<'a> {
    /// The business number sending it (the URL path segment).
    pub phone_number_id: &'a str,
    /// That number's access token. Sent as `Authorization: Bearer`, never logged.
    pub token: &'a str,
    pub to: Recipient<'a>,
    /// `text.body`: at most 4096 characters (split longer replies before calling).
    pub body: &'a str,
    /// The inbound wamid to quote (`context.message_id`).
    pub reply_to: Option<&'a str>,
    /// `biz_opaque_callback_data`: echoed by every status webhook of this message; the sender puts
    /// its job id here, which is how an ambiguous send is recognised later.
    pub callback_data: Option<&'a str>,
    /// `text.preview_url`: render a preview of the first URL in the body.
    pub preview_url: bool,
    /// An approved template to send instead of the text (`type: template`; `body` is then
    /// ignored): `{"name", "language": {"code"}, "components"?}`. The only message Meta takes
    /// outside the 24-hour window.
    pub template: Option<&'a serde_json::Value>,
    /// An agent's file, buttons or list to send instead of the text (`body` is then ignored):
    /// the message's own fields, `{"type": "image", "image": {...}}` (see
    /// [`wafleet_core::outgoing::Content::graph_message`]); check it with [`message_fields`].
    pub message: Option<&'a serde_json::Value>,
}

/// The `type` of a recorded message and its object (`"image"` and `{"link": …}`), when it has
/// the shape a send needs: a type of letters and underscores, and an object under that name.
pub fn message_fields(message: &serde_json::Value) -> Option<(&str, &serde_json::Value)> {
    let kind = message["type"]
        .as_str()
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))?;
    let object = message.get(kind).filter(|o| o.is_object())?;
    Some((kind, object))
}

/// Who receives a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient<'a> {
    /// A `wa_id` (digits, with or without a leading `+`); sent as `"to": "+<digits>"`, because
    /// without the `+` Meta prepends the *business* number's country code.
    Phone(&'a str),
    /// A business-scoped user id (`US.1349…`); sent as `"recipient"` (reference A.7).
    UserId(&'a str),
}

/// What became of a send. See the module docs for when each happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    Accepted {
        wamid: String,
        /// `contacts[0].wa_id`: how Meta names the customer, which for a phone dialled in another
        /// notation (Mexico's and Brazil's rewritten mobiles) is not the number sent.
        wa_id: Option<String>,
    },
    Rejected {
        http_status: u16,
        error: GraphError,
        class: ErrorClass,
    },
    /// The request may have reached Meta: do not resend blindly.
    Ambiguous { reason: String },
    /// The request certainly did not reach Meta: safe to retry.
    NotSent { reason: String },
}

/// Why a mark-read / typing call failed. These calls are idempotent, so the sender may retry any of
/// them; the class says whether it is worth it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphCallError {
    #[error("Graph API rejected the call: HTTP {http_status}, code {}", error.code)]
    Rejected {
        http_status: u16,
        error: GraphError,
        class: ErrorClass,
    },
    /// The call failed in transit. `maybe_sent` is false when the connection was never made.
    #[error("Graph API call failed in transit: {reason}")]
    Transport { reason: String, maybe_sent: bool },
}

impl GraphCallError {
    /// Whether calling again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Rejected { class, .. } => class.is_retryable(),
            Self::Transport { .. } => true,
        }
    }
}

impl GraphClient {
    /// A client for `base_url` (e.g. [`DEFAULT_BASE_URL`]) and API `version` (e.g. `v23.0`).
    /// `timeout` bounds each whole request; connecting is bounded by the smaller of it and 5 s.
    pub fn new(base_url: impl Into<String>, version: impl Into<String>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
            .user_agent(concat!("wafleet/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises");
        Self {
            http,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            version: version.into().trim_matches('/').to_owned(),
            receipts: Arc::new(Semaphore::new(DEFAULT_RECEIPTS_IN_FLIGHT)),
        }
    }

    /// The same client with at most `n` read receipts on the wire at once (at least 1).
    pub fn with_receipts_in_flight(mut self, n: usize) -> Self {
        self.receipts = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// [`Self::mark_read`] on a task of its own, once one of the process's receipt places is
    /// free (waiting at most [`RECEIPT_WAIT`]); logs and counts what fails. The handle is for
    /// tests: callers do not wait for it.
    pub fn mark_read_in_background(
        &self,
        phone_number_id: String,
        token: crate::config::Secret<String>,
        message_id: String,
        typing: bool,
    ) -> tokio::task::JoinHandle<Receipt> {
        let graph = self.clone();
        tokio::spawn(async move {
            let place = tokio::time::timeout(RECEIPT_WAIT, graph.receipts.acquire()).await;
            let Ok(Ok(_place)) = place else {
                metrics::counter!("wafleet_mark_read_skipped_total").increment(1);
                tracing::debug!(channel = %phone_number_id, "mark-read skipped: no place within {RECEIPT_WAIT:?}");
                return Receipt::Skipped;
            };
            match graph
                .mark_read(&phone_number_id, token.expose(), &message_id, typing)
                .await
            {
                Ok(()) => Receipt::Sent,
                Err(e) => {
                    metrics::counter!("wafleet_mark_read_errors_total").increment(1);
                    tracing::debug!(channel = %phone_number_id, error = %e, "mark-read failed");
                    Receipt::Failed
                }
            }
        })
    }

    fn messages_url(&self, phone_number_id: &str) -> Option<String> {
        self.edge_url(phone_number_id, "messages")
    }

    /// `{base}/{version}/{id}/{edge}`, for an id that cannot change the path or query.
    fn edge_url(&self, id: &str, edge: &str) -> Option<String> {
        self.node_url(id).map(|node| format!("{node}/{edge}"))
    }

    /// `{base}/{version}/{id}`, for an id that cannot change the path or query.
    fn node_url(&self, id: &str) -> Option<String> {
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        valid.then(|| format!("{}/{}/{id}", self.base_url, self.version))
    }

    /// Sends one text message. Never retries by itself.
    pub async fn send_text(&self, m: &OutgoingText<'_>) -> SendResult {
        let Some(url) = self.messages_url(m.phone_number_id) else {
            return SendResult::NotSent {
                reason: "phone_number_id is not a valid Graph API id".into(),
            };
        };
        let started = Instant::now();
        let sent = self
            .http
            .post(url)
            .bearer_auth(m.token)
            .json(&TextRequest::from(m))
            .send()
            .await;
        let result = match sent {
            Err(e) => transport_failure(&e),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Err(e) if response_is_2xx(status) => SendResult::Ambiguous {
                        reason: format!("HTTP {status} but the body was lost: {}", describe(&e)),
                    },
                    // Meta said no, but what it said was lost: the code could be a throttle (they
                    // come as 400s). Retried within the part's bounds, not failed for good.
                    Err(e) => SendResult::Rejected {
                        http_status: status,
                        error: unparsed_error(status, &describe(&e)),
                        class: ErrorClass::Transient,
                    },
                    Ok(body) if response_is_2xx(status) => match accepted_of(&body) {
                        Some((wamid, wa_id)) => SendResult::Accepted { wamid, wa_id },
                        None => SendResult::Ambiguous {
                            reason: format!("HTTP {status} without messages[0].id"),
                        },
                    },
                    Ok(body) => rejected(status, &body),
                }
            }
        };
        record(m.phone_number_id, "send", &result, started);
        result
    }

    /// Marks an inbound message (and all earlier ones of the thread) as read; with `typing`, also
    /// shows the typing indicator, which Meta hides on our next message or after 25 s.
    pub async fn mark_read(
        &self,
        phone_number_id: &str,
        token: &str,
        message_id: &str,
        typing: bool,
    ) -> Result<(), GraphCallError> {
        let Some(url) = self.messages_url(phone_number_id) else {
            return Err(GraphCallError::Transport {
                reason: "phone_number_id is not a valid Graph API id".into(),
                maybe_sent: false,
            });
        };
        let body = ReadRequest {
            messaging_product: "whatsapp",
            status: "read",
            message_id,
            typing_indicator: typing.then_some(TypingIndicator { kind: "text" }),
        };
        let started = Instant::now();
        let sent = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        let outcome = match sent {
            Err(e) => Err(GraphCallError::Transport {
                reason: describe(&e),
                maybe_sent: !e.is_connect(),
            }),
            Ok(response) => {
                let status = response.status().as_u16();
                if response_is_2xx(status) {
                    Ok(())
                } else {
                    let body = response.bytes().await.unwrap_or_default();
                    Err(call_rejected(status, &body))
                }
            }
        };
        let label = if typing { "typing" } else { "read" };
        metrics::histogram!("wafleet_graph_call_seconds", "call" => label)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &outcome {
            tracing::warn!(phone_number_id, call = label, error = %e, "Graph API call failed");
        }
        outcome
    }
}

impl GraphClient {
    /// The wording of a business account's template (`GET /{version}/{waba_id}/
    /// message_templates?name=…`): its header (its format, and its text when `TEXT`), body,
    /// footer and buttons in `language`, its parameter format and its review `status`. `Ok(None)`
    /// when the account has no template of that name and language. Meta lists every status
    /// (the list is not filtered on `APPROVED`): a paused, disabled or rejected template is
    /// answered with its status, so a send can be refused naming it.
    pub async fn template_text(
        &self,
        token: &str,
        waba_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<wafleet_core::format::template::TemplateText>, GraphCallError> {
        #[derive(serde::Deserialize)]
        struct Page {
            data: Vec<Template>,
        }
        #[derive(serde::Deserialize)]
        struct Template {
            name: String,
            language: String,
            status: Option<String>,
            parameter_format: Option<String>,
            #[serde(default)]
            components: Vec<Component>,
        }
        #[derive(serde::Deserialize)]
        struct Component {
            #[serde(rename = "type")]
            kind: String,
            format: Option<String>,
            text: Option<String>,
            #[serde(default)]
            buttons: Vec<Button>,
        }
        #[derive(serde::Deserialize)]
        struct Button {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            text: String,
            url: Option<String>,
        }
        let Some(url) = self.edge_url(waba_id, "message_templates") else {
            return Err(GraphCallError::Transport {
                reason: "waba_id is not a Graph API id".into(),
                maybe_sent: false,
            });
        };
        let query = [
            ("name", name),
            ("fields", "name,language,status,parameter_format,components"),
            ("limit", "100"),
        ];
        let page: Page = self.get_json(url, token, &query, "template").await?;
        // `name` filters by part of the name: the exact one is picked here (an approved one
        // first, should Meta list the name and language twice).
        let found = page
            .data
            .into_iter()
            .filter(|t| t.name == name && t.language.eq_ignore_ascii_case(language))
            .min_by_key(|t| t.status.as_deref() != Some("APPROVED"));
        Ok(found.map(|t| {
            let text_of = |kind: &str| {
                t.components
                    .iter()
                    .find(|c| {
                        c.kind.eq_ignore_ascii_case(kind)
                            && c.format
                                .as_deref()
                                .is_none_or(|f| f.eq_ignore_ascii_case("TEXT"))
                    })
                    .and_then(|c| c.text.clone())
            };
            let of_kind = |kind: &str| {
                t.components
                    .iter()
                    .find(|c| c.kind.eq_ignore_ascii_case(kind))
            };
            wafleet_core::format::template::TemplateText {
                header: text_of("HEADER"),
                body: text_of("BODY"),
                footer: text_of("FOOTER"),
                // A header without a format is a text one.
                header_format: of_kind("HEADER")
                    .map(|h| h.format.as_deref().unwrap_or("TEXT").to_ascii_uppercase()),
                buttons: of_kind("BUTTONS")
                    .map(|c| {
                        c.buttons
                            .iter()
                            .map(|b| wafleet_core::format::template::DefinedButton {
                                kind: b.kind.to_ascii_uppercase(),
                                text: b.text.clone(),
                                url: b.url.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                named: t
                    .parameter_format
                    .as_deref()
                    .is_some_and(|f| f.eq_ignore_ascii_case("NAMED")),
                status: t.status.as_deref().map(str::to_ascii_uppercase),
            }
        }))
    }

    /// A business number as Meta has it (`GET /{version}/{phone_number_id}?fields=…`), read
    /// with the number's own access token: that Meta answers at all is what shows the token
    /// may use the number (`wafleetctl channel check`). A refusal is classified as a send's is
    /// ([`GraphCallError::Rejected`]: 190 a bad token, 100 with subcode 33 a number Meta does
    /// not know or the token may not use, 10 / 200–299 a missing permission).
    pub async fn phone_number(
        &self,
        token: &str,
        phone_number_id: &str,
    ) -> Result<PhoneNumber, GraphCallError> {
        let Some(url) = self.node_url(phone_number_id) else {
            return Err(GraphCallError::Transport {
                reason: "phone_number_id is not a valid Graph API id".into(),
                maybe_sent: false,
            });
        };
        let query = [("fields", PhoneNumber::FIELDS)];
        self.get_json(url, token, &query, "phone_number").await
    }

    /// The apps subscribed to business account `waba_id`'s webhooks (`GET
    /// /{version}/{waba_id}/subscribed_apps`): Meta sends an account's webhooks only to those.
    /// Not in our reference (section C names the endpoint only among the rate-limited ones);
    /// from Meta's public Graph API reference, "WhatsApp Business Account Subscribed Apps"
    /// (developers.facebook.com/docs/graph-api/reference/whats-app-business-account/subscribed_apps/).
    pub async fn subscribed_apps(
        &self,
        token: &str,
        waba_id: &str,
    ) -> Result<Vec<SubscribedApp>, GraphCallError> {
        let Some(url) = self.node_url(waba_id) else {
            return Err(GraphCallError::Transport {
                reason: "waba_id is not a valid Graph API id".into(),
                maybe_sent: false,
            });
        };
        let url = format!("{url}/subscribed_apps");
        let apps: SubscribedApps = self.get_json(url, token, &[], "subscribed_apps").await?;
        Ok(apps
            .data
            .into_iter()
            .filter_map(|a| a.whatsapp_business_api_data)
            .collect())
    }

    /// `GET url?query` with `token`, its 2xx body read as `T`; a refusal classified; timed in
    /// `wafleet_graph_call_seconds{call}`.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        token: &str,
        query: &[(&str, &str)],
        call: &'static str,
    ) -> Result<T, GraphCallError> {
        let started = Instant::now();
        let outcome = async {
            let (_, body) = answered(self.http.get(url).bearer_auth(token).query(query)).await?;
            serde_json::from_slice(&body).map_err(|e| GraphCallError::Transport {
                reason: format!(
                    "unexpected answer: {}",
                    wafleet_core::json_error_without_input(&e)
                ),
                maybe_sent: true,
            })
        }
        .await;
        metrics::histogram!("wafleet_graph_call_seconds", "call" => call)
            .record(started.elapsed().as_secs_f64());
        outcome
    }
}

/// A business number as `GET /{version}/{phone_number_id}` answers it. Reference section C
/// documents this read only for `throughput` and `whatsapp_business_manager_messaging_limit`;
/// these three fields are the ones Meta's own phone numbers reference lists as a number's default
/// fields, so each is optional here, and only that Meta answered is relied on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PhoneNumber {
    /// As Meta writes it (`+1 555-555-5555` in its sample), not digits only as in webhooks.
    pub display_phone_number: Option<String>,
    /// The display name Meta approved for the number.
    pub verified_name: Option<String>,
    /// `GREEN`, `YELLOW`, `RED` (or `UNKNOWN`).
    pub quality_rating: Option<String>,
}

impl PhoneNumber {
    /// The `fields` asked for.
    pub const FIELDS: &str = "display_phone_number,verified_name,quality_rating";
}

/// What `GET /{version}/{waba_id}/subscribed_apps` answers: `{"data":
/// [{"whatsapp_business_api_data": {"id", "name", "link"}}]}`, `{"data": []}` when no app is
/// subscribed (Meta's public reference; not in ours). Read tolerantly: an item without the
/// object is skipped.
#[derive(serde::Deserialize)]
struct SubscribedApps {
    #[serde(default)]
    data: Vec<SubscribedItem>,
}

#[derive(serde::Deserialize)]
struct SubscribedItem {
    whatsapp_business_api_data: Option<SubscribedApp>,
}

/// An app subscribed to a business account's webhooks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SubscribedApp {
    /// The App ID (what `channel add --app-id` stores).
    pub id: Option<String>,
    pub name: Option<String>,
}

/// A customer's media file, fetched from Meta.
pub struct Media {
    /// As Meta gave it, without parameters, lowercase (`image/jpeg`).
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

/// Why a customer's media file was not fetched.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("Meta refused the media: HTTP {http_status}, code {code}")]
    Rejected { http_status: u16, code: i64 },
    #[error("the media is {size} bytes, more than the {max} taken")]
    TooLarge { size: u64, max: u64 },
    #[error("the media is {0:?}, which is not taken")]
    Unsupported(String),
    #[error("fetching the media failed: {0}")]
    Transport(String),
    /// What Meta named cannot be fetched however often it is asked (an id or URL of the wrong
    /// shape, an answer that does not read): not worth another try.
    #[error("the media cannot be fetched: {0}")]
    Invalid(String),
}

impl MediaError {
    /// The metric label of the failure.
    pub fn label(&self) -> &'static str {
        match self {
            MediaError::Rejected { .. } => "rejected",
            MediaError::TooLarge { .. } => "too_large",
            MediaError::Unsupported(_) => "unsupported",
            MediaError::Transport(_) => "transport",
            MediaError::Invalid(_) => "invalid",
        }
    }
}

/// What `GET /{version}/{media_id}` answers (more fields exist; these are the ones used).
#[derive(serde::Deserialize)]
struct MediaInfo {
    url: String,
    mime_type: String,
    file_size: Option<u64>,
}

/// A customer's media file on its way from Meta: its type and size, and the response whose body
/// is the file.
pub struct OpenMedia {
    pub mime_type: String,
    /// The size Meta's download answer states, when it does.
    pub length: Option<u64>,
    pub response: reqwest::Response,
}

impl GraphClient {
    /// Fetches a customer's media file (an image they sent), whole: [`Self::open_media`], then
    /// the body, stopped as soon as it passes `max_bytes`.
    pub async fn fetch_media(
        &self,
        token: &str,
        media_id: &str,
        max_bytes: u64,
        accepted: &[&str],
    ) -> Result<Media, MediaError> {
        let started = Instant::now();
        let fetched = async {
            let OpenMedia {
                mime_type,
                mut response,
                ..
            } = self
                .open_media(token, media_id, max_bytes, accepted)
                .await?;
            let mut bytes = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| MediaError::Transport(describe(&e)))?
            {
                bytes.extend_from_slice(&chunk);
                if bytes.len() as u64 > max_bytes {
                    return Err(MediaError::TooLarge {
                        size: bytes.len() as u64,
                        max: max_bytes,
                    });
                }
            }
            Ok(Media { mime_type, bytes })
        }
        .await;
        metrics::histogram!("wafleet_graph_call_seconds", "call" => "media")
            .record(started.elapsed().as_secs_f64());
        fetched
    }

    /// Opens a customer's media file: its URL from `GET /{version}/{media_id}`, then the
    /// download from that short-lived URL, both with the channel's token; the body is left to
    /// the caller. Refused before downloading when Meta's media type is not in `accepted`
    /// (empty: any) or a stated size is over `max_bytes`.
    pub async fn open_media(
        &self,
        token: &str,
        media_id: &str,
        max_bytes: u64,
        accepted: &[&str],
    ) -> Result<OpenMedia, MediaError> {
        let transport = |e: reqwest::Error| MediaError::Transport(describe(&e));
        if media_id.is_empty()
            || !media_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(MediaError::Invalid("not a Graph API media id".into()));
        }
        let url = format!("{}/{}/{}", self.base_url, self.version, media_id);
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?;
        if !response_is_2xx(status) {
            let code = parse_graph_error(&body).map_or(UNPARSED_ERROR_CODE, |e| e.code);
            return Err(MediaError::Rejected {
                http_status: status,
                code,
            });
        }
        let info: MediaInfo = serde_json::from_slice(&body).map_err(|e| {
            MediaError::Invalid(format!(
                "unreadable media info: {}",
                wafleet_core::json_error_without_input(&e)
            ))
        })?;
        let mime_type = info
            .mime_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !accepted.is_empty() && !accepted.contains(&mime_type.as_str()) {
            return Err(MediaError::Unsupported(mime_type));
        }
        let too_large = |size: u64| MediaError::TooLarge {
            size,
            max: max_bytes,
        };
        if let Some(size) = info.file_size.filter(|&s| s > max_bytes) {
            return Err(too_large(size));
        }
        // The token goes only where Meta's own answer points, and only over TLS (or to the
        // same plain-HTTP host the client is configured for: the simulator).
        let target = reqwest::Url::parse(&info.url)
            .map_err(|_| MediaError::Invalid("the media URL does not parse".into()))?;
        let base = reqwest::Url::parse(&self.base_url).ok();
        let same_origin = base.as_ref().is_some_and(|b| {
            b.scheme() == target.scheme()
                && b.host_str() == target.host_str()
                && b.port_or_known_default() == target.port_or_known_default()
        });
        if target.scheme() != "https" && !same_origin {
            return Err(MediaError::Invalid("the media URL is not https".into()));
        }
        let response = self
            .http
            .get(target)
            .bearer_auth(token)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        if !response_is_2xx(status) {
            return Err(MediaError::Rejected {
                http_status: status,
                code: UNPARSED_ERROR_CODE,
            });
        }
        let length = response.content_length();
        if let Some(size) = length.filter(|&s| s > max_bytes) {
            return Err(too_large(size));
        }
        Ok(OpenMedia {
            mime_type,
            length,
            response,
        })
    }
}

impl GraphClient {
    /// Uploads a file for a number to send (`POST /{version}/{phone_number_id}/media`,
    /// multipart: `messaging_product=whatsapp`, `type` its MIME type, `file`) and answers the
    /// media id Meta gives it. Not in our reference; Meta's public "Upload media" page. `file`
    /// streams the bytes (the caller bounds them). A refusal is classified like a send's.
    pub async fn upload_media(
        &self,
        token: &str,
        phone_number_id: &str,
        mime_type: &str,
        filename: &str,
        file: reqwest::Body,
    ) -> Result<String, GraphCallError> {
        let Some(url) = self.edge_url(phone_number_id, "media") else {
            return Err(GraphCallError::Transport {
                reason: "phone_number_id is not a valid Graph API id".into(),
                maybe_sent: false,
            });
        };
        let part = reqwest::multipart::Part::stream(file)
            .file_name(filename.to_string())
            .mime_str(mime_type)
            .map_err(|_| GraphCallError::Transport {
                reason: "the file's type is not a MIME type".into(),
                maybe_sent: false,
            })?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime_type.to_string())
            .part("file", part);
        let started = Instant::now();
        let outcome = async {
            let (status, body) =
                answered(self.http.post(url).bearer_auth(token).multipart(form)).await?;
            #[derive(serde::Deserialize)]
            struct Uploaded {
                id: String,
            }
            serde_json::from_slice::<Uploaded>(&body)
                .ok()
                .map(|u| u.id)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| GraphCallError::Transport {
                    reason: format!("HTTP {status} without the media's id"),
                    maybe_sent: true,
                })
        }
        .await;
        metrics::histogram!("wafleet_graph_call_seconds", "call" => "upload")
            .record(started.elapsed().as_secs_f64());
        outcome
    }
}

/// Sends a read or an upload and reads Meta's whole answer: its status and body when 2xx, the
/// classified rejection otherwise, a transport error (sent, or maybe not) when none came.
async fn answered(request: reqwest::RequestBuilder) -> Result<(u16, bytes::Bytes), GraphCallError> {
    let response = request
        .send()
        .await
        .map_err(|e| GraphCallError::Transport {
            reason: describe(&e),
            maybe_sent: !e.is_connect(),
        })?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| GraphCallError::Transport {
            reason: describe(&e),
            maybe_sent: true,
        })?;
    if !response_is_2xx(status) {
        return Err(call_rejected(status, &body));
    }
    Ok((status, body))
}

fn response_is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

/// A send that failed before any response: `NotSent` if the connection never came up.
fn transport_failure(e: &reqwest::Error) -> SendResult {
    // `is_connect` covers refused connections, DNS failures, TLS handshake errors and the connect
    // timeout; in all of them no byte of the request was written. Everything else (the request
    // timeout, a reset after writing) may have reached Meta. Requests on a pooled connection that
    // the server had already closed are retried by hyper itself before we ever see an error.
    if e.is_connect() {
        SendResult::NotSent {
            reason: describe(e),
        }
    } else {
        SendResult::Ambiguous {
            reason: describe(e),
        }
    }
}

/// The error and its causes on one line, without the URL's query (there is none) or any header.
/// A transport error as logs may show it (see [`crate::telemetry::http_error_text`]).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    crate::telemetry::http_error_text(e)
}

fn rejected(status: u16, body: &[u8]) -> SendResult {
    let (error, class) = error_of(status, body);
    SendResult::Rejected {
        http_status: status,
        error,
        class,
    }
}

/// [`rejected`] for the calls that are not sends.
fn call_rejected(status: u16, body: &[u8]) -> GraphCallError {
    let (error, class) = error_of(status, body);
    GraphCallError::Rejected {
        http_status: status,
        error,
        class,
    }
}

/// The Graph error of a non-2xx answer and its class.
fn error_of(status: u16, body: &[u8]) -> (GraphError, ErrorClass) {
    match parse_graph_error(body) {
        Some(error) => {
            let class = error.class(status);
            (error, class)
        }
        None => (
            unparsed_error(status, &format!("{} bytes", body.len())),
            classify(UNPARSED_ERROR_CODE, status, None),
        ),
    }
}

/// The stand-in for an error body we could not read. The body itself is left out on purpose: it
/// may echo the request.
fn unparsed_error(status: u16, what: &str) -> GraphError {
    GraphError {
        code: UNPARSED_ERROR_CODE,
        subcode: None,
        message: format!("HTTP {status} without a Graph API error body ({what})"),
        kind: None,
        details: None,
        fbtrace_id: None,
        is_transient: None,
    }
}

/// Meta's acceptance: `messages[0].id`, and `contacts[0].wa_id` when it names one.
fn accepted_of(body: &[u8]) -> Option<(String, Option<String>)> {
    #[derive(serde::Deserialize)]
    struct Accepted {
        messages: Vec<Message>,
        #[serde(default)]
        contacts: Vec<Contact>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        id: String,
    }
    #[derive(serde::Deserialize)]
    struct Contact {
        wa_id: Option<String>,
    }
    let accepted: Accepted = serde_json::from_slice(body).ok()?;
    let wamid = accepted
        .messages
        .into_iter()
        .next()
        .map(|m| m.id)
        .filter(|id| !id.is_empty())?;
    let wa_id = accepted
        .contacts
        .into_iter()
        .next()
        .and_then(|c| c.wa_id)
        .filter(|w| !w.is_empty());
    Some((wamid, wa_id))
}

fn record(phone_number_id: &str, call: &'static str, result: &SendResult, started: Instant) {
    let outcome = match result {
        SendResult::Accepted { .. } => "accepted",
        SendResult::Rejected { .. } => "rejected",
        SendResult::Ambiguous { .. } => "ambiguous",
        SendResult::NotSent { .. } => "not_sent",
    };
    metrics::counter!("wafleet_graph_sends_total", "outcome" => outcome).increment(1);
    metrics::histogram!("wafleet_graph_call_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
    match result {
        SendResult::Accepted { .. } => {}
        SendResult::Rejected {
            http_status,
            error,
            class,
        } => tracing::warn!(
            phone_number_id,
            http_status,
            code = error.code,
            class = ?class,
            fbtrace_id = error.fbtrace_id.as_deref().unwrap_or("-"),
            "Graph API rejected a send"
        ),
        SendResult::Ambiguous { reason } | SendResult::NotSent { reason } => {
            tracing::warn!(phone_number_id, outcome, reason, "Graph API send failed")
        }
    }
}

/// The JSON body of a text send (reference B.2), serialised straight from borrowed fields.
#[derive(Serialize)]
struct TextRequest<'a> {
    messaging_product: &'static str,
    recipient_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recipient: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Context<'a>>,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<&'a serde_json::Value>,
    /// An agent's file, buttons or list: `"image": {...}`, `"interactive": {...}`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    content: Option<std::collections::BTreeMap<&'a str, &'a serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    biz_opaque_callback_data: Option<&'a str>,
}

#[derive(Serialize)]
struct Context<'a> {
    message_id: &'a str,
}

#[derive(Serialize)]
struct Text<'a> {
    preview_url: bool,
    body: &'a str,
}

impl<'a> From<&OutgoingText<'a>> for TextRequest<'a> {
    fn from(m: &OutgoingText<'a>) -> Self {
        let (to, recipient) = match m.to {
            Recipient::Phone(digits) => {
                (Some(format!("+{}", digits.trim_start_matches('+'))), None)
            }
            Recipient::UserId(id) => (None, Some(id)),
        };
        // A template wins over a message, and a message of the wrong shape is sent as its text
        // would be (the sender fails such a part before it gets here).
        let content = m
            .message
            .filter(|_| m.template.is_none())
            .and_then(message_fields);
        Self {
            messaging_product: "whatsapp",
            recipient_type: "individual",
            to,
            recipient,
            context: m.reply_to.map(|message_id| Context { message_id }),
            kind: match (m.template, content) {
                (Some(_), _) => "template",
                (None, Some((kind, _))) => kind,
                (None, None) => "text",
            },
            text: (m.template.is_none() && content.is_none()).then_some(Text {
                preview_url: m.preview_url,
                body: m.body,
            }),
            template: m.template,
            content: content
                .map(|(kind, object)| std::collections::BTreeMap::from([(kind, object)])),
            biz_opaque_callback_data: m.callback_data,
        }
    }
}

/// The JSON body of mark-read, with the typing indicator when asked (reference B.3).
#[derive(Serialize)]
struct ReadRequest<'a> {
    messaging_product: &'static str,
    status: &'static str,
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    typing_indicator: Option<TypingIndicator>,
}

#[derive(Serialize)]
struct TypingIndicator {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(to: Recipient<'static>) -> OutgoingText<'static> {
        OutgoingText {
            phone_number_id: "106540352242922",
            token: "secret-token",
            to,
            body: "Hola, ¿cómo te ayudo?",
            reply_to: None,
            callback_data: None,
            preview_url: false,
            template: None,
            message: None,
        }
    }

    #[test]
    fn an_agents_file_or_buttons_are_sent_as_their_type_and_object() {
        use wafleet_core::outgoing::{Button, Content, Media};
        let image = Media {
            kind: "image".into(),
            link: Some("https://cdn.example.com/a.jpg".into()),
            id: None,
            caption: Some("Tu pedido".into()),
            filename: None,
        };
        let message = Content::Media(&image).graph_message();
        let m = OutgoingText {
            callback_data: Some("job-44"),
            message: Some(&message),
            ..text(Recipient::Phone("573001234567"))
        };
        assert_eq!(
            serde_json::to_value(TextRequest::from(&m)).unwrap(),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "+573001234567",
                "type": "image",
                "image": {"link": "https://cdn.example.com/a.jpg", "caption": "Tu pedido"},
                "biz_opaque_callback_data": "job-44"
            })
        );
        let buttons = [Button {
            id: "si".into(),
            title: "Sí".into(),
        }];
        let message = Content::Buttons {
            body: "¿Confirmas?",
            buttons: &buttons,
            header: None,
            footer: None,
        }
        .graph_message();
        let m = OutgoingText {
            message: Some(&message),
            ..text(Recipient::UserId("US.1"))
        };
        assert_eq!(
            serde_json::to_value(TextRequest::from(&m)).unwrap(),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "recipient": "US.1",
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "¿Confirmas?"},
                    "action": {"buttons": [{"type": "reply", "reply": {"id": "si", "title": "Sí"}}]}
                }
            })
        );
    }

    #[test]
    fn a_recorded_message_needs_a_type_and_its_object() {
        assert!(message_fields(&json!({"type": "image", "image": {"id": "1"}})).is_some());
        for bad in [
            json!({"type": "image"}),
            json!({"type": "image", "image": "x"}),
            json!({"type": "Image", "Image": {}}),
            json!({"image": {}}),
            json!("image"),
        ] {
            assert_eq!(message_fields(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_reply_to_a_phone_has_exactly_the_documented_fields() {
        let m = OutgoingText {
            reply_to: Some("wamid.IN1"),
            callback_data: Some("job-42"),
            preview_url: true,
            ..text(Recipient::Phone("573001234567"))
        };
        assert_eq!(
            serde_json::to_value(TextRequest::from(&m)).unwrap(),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "+573001234567",
                "context": {"message_id": "wamid.IN1"},
                "type": "text",
                "text": {"preview_url": true, "body": "Hola, ¿cómo te ayudo?"},
                "biz_opaque_callback_data": "job-42"
            })
        );
    }

    #[test]
    fn optional_fields_are_left_out_and_a_plus_is_never_doubled() {
        let m = text(Recipient::Phone("+16505551234"));
        assert_eq!(
            serde_json::to_value(TextRequest::from(&m)).unwrap(),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "+16505551234",
                "type": "text",
                "text": {"preview_url": false, "body": "Hola, ¿cómo te ayudo?"}
            })
        );
    }

    #[test]
    fn a_template_is_sent_instead_of_the_text() {
        let template = json!({"name": "order_update", "language": {"code": "es"}});
        let m = OutgoingText {
            callback_data: Some("job-43"),
            template: Some(&template),
            ..text(Recipient::Phone("573001234567"))
        };
        assert_eq!(
            serde_json::to_value(TextRequest::from(&m)).unwrap(),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "+573001234567",
                "type": "template",
                "template": {"name": "order_update", "language": {"code": "es"}},
                "biz_opaque_callback_data": "job-43"
            })
        );
    }

    #[test]
    fn a_business_scoped_user_id_is_sent_as_recipient() {
        let m = text(Recipient::UserId("US.13491208655302741918"));
        let v = serde_json::to_value(TextRequest::from(&m)).unwrap();
        assert_eq!(v["recipient"], "US.13491208655302741918");
        assert!(v.get("to").is_none());
    }

    #[test]
    fn mark_read_adds_the_typing_indicator_only_when_asked() {
        let read = ReadRequest {
            messaging_product: "whatsapp",
            status: "read",
            message_id: "wamid.IN1",
            typing_indicator: None,
        };
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1"})
        );
        let typing = ReadRequest {
            typing_indicator: Some(TypingIndicator { kind: "text" }),
            ..read
        };
        assert_eq!(
            serde_json::to_value(&typing).unwrap()["typing_indicator"],
            json!({"type": "text"})
        );
    }

    #[test]
    fn error_bodies_are_classified_on_their_code_or_else_on_the_status() {
        let throttled = rejected(
            400,
            br#"{"error":{"code":131056,"message":"(#131056) pair rate limit hit"}}"#,
        );
        assert!(matches!(
            throttled,
            SendResult::Rejected {
                class: ErrorClass::Throttled { .. },
                ..
            }
        ));
        for (status, class) in [
            (502, ErrorClass::Transient),
            (503, ErrorClass::Transient),
            (429, ErrorClass::Transient),
            (404, ErrorClass::Permanent),
            (400, ErrorClass::Permanent),
        ] {
            let SendResult::Rejected {
                error, class: got, ..
            } = rejected(status, b"<html>Bad Gateway</html>")
            else {
                panic!("rejected() builds Rejected");
            };
            assert_eq!(got, class, "HTTP {status}");
            assert_eq!(error.code, UNPARSED_ERROR_CODE);
            assert!(!error.message.contains("Bad Gateway"), "bodies stay out");
        }
    }

    #[test]
    fn the_wamid_is_read_from_messages_0_id_and_the_customer_from_contacts_0_wa_id() {
        let body = br#"{"messaging_product":"whatsapp","contacts":[{"input":"+525512345678","wa_id":"5215512345678"}],"messages":[{"id":"wamid.X"}]}"#;
        assert_eq!(
            accepted_of(body),
            Some(("wamid.X".into(), Some("5215512345678".into())))
        );
        // A send to a business-scoped id names no wa_id; the wamid alone is an acceptance.
        assert_eq!(
            accepted_of(br#"{"contacts":[{"input":"US.1","user_id":"US.1"}],"messages":[{"id":"wamid.Y"}]}"#),
            Some(("wamid.Y".into(), None))
        );
        assert_eq!(
            accepted_of(br#"{"messages":[{"id":"wamid.Z"}]}"#),
            Some(("wamid.Z".into(), None))
        );
        assert_eq!(accepted_of(br#"{"messages":[]}"#), None);
        assert_eq!(accepted_of(br#"{"messages":[{"id":""}]}"#), None);
        assert_eq!(accepted_of(b"{"), None);
    }

    #[tokio::test]
    async fn a_transport_error_does_not_show_the_urls_query() {
        // Nothing listens on port 1: the connection is refused.
        let e = reqwest::Client::new()
            .get("http://127.0.0.1:1/whatsapp_business/attachments/?mid=77&hash=SIGNED")
            .send()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("SIGNED"), "reqwest shows it: {e}");
        let shown = describe(&e);
        assert!(
            !shown.contains("SIGNED") && !shown.contains("mid="),
            "{shown}"
        );
        assert!(
            shown.contains("127.0.0.1:1/whatsapp_business/attachments/"),
            "{shown}"
        );
    }

    #[test]
    fn ids_that_could_change_the_url_are_refused() {
        let client = GraphClient::new("http://127.0.0.1:1/", "/v23.0/", Duration::from_secs(1));
        assert_eq!(
            client.messages_url("123").as_deref(),
            Some("http://127.0.0.1:1/v23.0/123/messages")
        );
        for bad in ["", "12/../34", "1?x=2", "1 2", "1#"] {
            assert_eq!(client.messages_url(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn read_receipts_past_the_bound_wait_and_are_dropped_after_their_wait() {
        // A Graph API that takes connections and never answers: every receipt holds its own.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                let _ = accepted_tx.send(());
            }
        });
        let client = GraphClient::new(format!("http://{addr}"), "v23.0", Duration::from_secs(60))
            .with_receipts_in_flight(2);
        let receipt = |wamid: &str| {
            client.mark_read_in_background(
                "106540352242922".into(),
                crate::config::Secret::new("secret-token".to_string()),
                wamid.into(),
                true,
            )
        };
        let first = receipt("wamid.1");
        let second = receipt("wamid.2");
        let started = Instant::now();
        let third = receipt("wamid.3");
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(10), accepted.recv())
                .await
                .expect("the first two receipts reach Meta")
                .unwrap();
        }
        assert_eq!(third.await.unwrap(), Receipt::Skipped);
        assert!(started.elapsed() >= RECEIPT_WAIT, "{:?}", started.elapsed());
        assert!(
            accepted.try_recv().is_err(),
            "a third connection was opened"
        );
        assert!(!first.is_finished() && !second.is_finished());
        first.abort();
        second.abort();
    }
}
