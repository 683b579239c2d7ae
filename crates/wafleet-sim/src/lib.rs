//! # wafleet-sim
//!
//! One local HTTP server standing in for everything wafleet calls on the internet: Meta's Graph API
//! (sends, mark-read, typing, status webhooks back to ingest) and the LLM providers (OpenAI-shaped
//! and Anthropic-shaped). The demo (`just run`), the end-to-end tests and the end-to-end benchmark
//! point wafleet at it instead of at Meta and the providers. It must behave like the real APIs in
//! everything wafleet relies on — request shapes, error shapes and codes, rate limits, signed
//! webhooks — because tests against a wrong simulator prove nothing; its own tests pin that down.
//! It never calls anything but the configured webhook URL.
//!
//! # Layout
//! - [`SimConfig`] and [`run`] / [`serve`] / [`router`]: the server, started by tests on port 0.
//! - `graph`: `POST /{version}/{phone_number_id}/messages` (auth, validation, throughput and pair
//!   limits, fault injection) and the status webhooks it sends afterwards.
//! - `media`: `GET /{version}/{media_id}` and the download it points to, customers' media files.
//! - `numbers`: `GET /{version}/{phone_number_id}`, a business number's display number, verified
//!   name and quality rating.
//! - `templates`: `GET /{version}/{waba_id}/message_templates`, a business account's templates.
//! - `subscriptions`: `GET`, `POST`, `DELETE /{version}/{waba_id}/subscribed_apps`, the apps
//!   subscribed to a business account's webhooks (not in our reference; Meta's public docs).
//! - `llm`: `POST /v1/chat/completions` (also `/chat/completions`, DeepSeek's path) and
//!   `POST /v1/messages`, canned context-aware answers in the customer's language, and
//!   `POST /v1/audio/transcriptions`, OpenAI's speech to text.
//!
//! # Admin endpoints (`/_sim/…`)
//! | route | what |
//! |---|---|
//! | `POST /_sim/faults` | queue a Graph fault ([`Fault`]): the next `count` matching sends fail |
//! | `POST /_sim/llm_faults` | queue an LLM fault ([`LlmFault`]) |
//! | `GET /_sim/messages` | every accepted send ([`SentMessage`]), oldest first |
//! | `GET /_sim/reads` | every mark-read / typing call ([`ReadReceipt`]) |
//! | `GET /_sim/uploads` | every media upload ([`Upload`]): type, file name, size |
//! | `GET /_sim/webhooks` | every status webhook posted ([`WebhookDelivery`]) and how it was answered |
//! | `GET /_sim/llm_requests` | every LLM request ([`LlmRequest`]), whole |
//! | `GET /_sim/transcriptions` | every transcription request ([`TranscriptionRequest`]) |
//! | `POST /_sim/template_status` | `{"name", "language", "status"}`: the status Meta lists a template with (`PAUSED`, `DISABLED`, `REJECTED`; `APPROVED` again); its sends are refused (132015 paused, 132016 disabled, 132001 otherwise) |
//! | `POST /_sim/reset` | forget all of the above, queued faults, templates' statuses, apps unsubscribed from business accounts and rate-limit state |
//! | `GET /healthz` | `ok` |

mod graph;
mod llm;
mod media;
mod numbers;
mod subscriptions;
mod templates;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use graph::{Fault, ReadReceipt, SentMessage, WebhookDelivery};
pub use llm::{
    HANDOVER_MARKER, LlmFault, LlmRequest, TranscriptionRequest, reply_for, transcript_of,
};
pub use media::Upload;
pub use media::media_bytes;
pub use numbers::VERIFIED_NAME;
pub use subscriptions::APP_ID;

/// How the simulator behaves. [`Default`] matches Meta's defaults where Meta has one.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Access token per `phone_number_id`. Empty: any non-empty bearer token is accepted for any
    /// number (handy for the demo); otherwise unknown numbers get error 100 and wrong tokens 190.
    pub tokens: HashMap<String, String>,
    /// Throughput per business number, messages/s (Meta: 80). 0 turns the limit off.
    pub mps: u32,
    /// Sends a quiet number may make at once; `None` = `mps` (one second's worth).
    pub number_burst: Option<u32>,
    /// Pair rate to one recipient: one message per `pair_period` (Meta: 6 s)…
    pub pair_period: Duration,
    /// …after a burst of up to `pair_burst` (Meta: 45). 0 turns the pair limit off.
    pub pair_burst: u32,
    /// Where to post status webhooks; `None` = post nothing.
    pub webhook: Option<WebhookTarget>,
    /// Pause before `sent`, and between `sent`, `delivered` and `read`.
    pub status_delay: Duration,
    /// Whether a `read` status follows `delivered` (users with read receipts on).
    pub read_receipts: bool,
    /// Time every LLM answer takes, like a model generating.
    pub llm_latency: Duration,
    /// Time a mark-read request takes to be answered (a slow Graph API).
    pub read_latency: Duration,
    /// `metadata.display_phone_number` of the webhooks.
    pub display_phone_number: String,
    /// `entry[].id` of the webhooks (the WhatsApp Business Account id).
    pub waba_id: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tokens: HashMap::new(),
            mps: 80,
            number_burst: None,
            pair_period: Duration::from_secs(6),
            pair_burst: 45,
            webhook: None,
            status_delay: Duration::from_millis(50),
            read_receipts: true,
            llm_latency: Duration::from_millis(200),
            read_latency: Duration::ZERO,
            display_phone_number: "15550000000".into(),
            waba_id: "WABA-SIM".into(),
        }
    }
}

/// Where status webhooks go and the app secret they are signed with.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub app_secret: String,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("app_secret", &"[redacted]")
            .finish()
    }
}

/// The simulator's shared state. Cheap to clone; tests may keep one to inspect what happened
/// without going through HTTP.
#[derive(Clone)]
pub struct SimState(Arc<Inner>);

struct Inner {
    config: SimConfig,
    /// Posts status webhooks.
    http: reqwest::Client,
    /// Cancelled on shutdown: hanging requests and pending webhooks end instead of holding the
    /// graceful shutdown open forever.
    shutdown: CancellationToken,
    /// Rate-limit state, swapped whole on reset.
    limits: Mutex<Arc<graph::Limits>>,
    faults: Mutex<Vec<Fault>>,
    llm_faults: Mutex<Vec<LlmFault>>,
    messages: Mutex<Vec<SentMessage>>,
    reads: Mutex<Vec<ReadReceipt>>,
    uploads: Mutex<Vec<Upload>>,
    webhooks: Mutex<Vec<WebhookDelivery>>,
    llm_requests: Mutex<Vec<LlmRequest>>,
    transcriptions: Mutex<Vec<TranscriptionRequest>>,
    /// Templates whose status is not `APPROVED`, by (name, language): listed with it, and their
    /// sends refused as Meta refuses a paused, disabled or rejected template.
    template_statuses: Mutex<HashMap<(String, String), String>>,
    /// Business accounts the simulator's app was unsubscribed from (`DELETE
    /// …/subscribed_apps`); every other one has it subscribed.
    unsubscribed: Mutex<HashSet<String>>,
    /// Sequence number of wamids and response ids.
    next_id: AtomicU64,
    /// Random per instance, so wamids of two simulator runs never collide in one database.
    instance: u32,
}

impl SimState {
    pub fn new(config: SimConfig) -> Self {
        let limits = graph::Limits::new(&config);
        Self(Arc::new(Inner {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("the TLS backend initialises"),
            shutdown: CancellationToken::new(),
            limits: Mutex::new(Arc::new(limits)),
            faults: Mutex::default(),
            llm_faults: Mutex::default(),
            messages: Mutex::default(),
            reads: Mutex::default(),
            uploads: Mutex::default(),
            webhooks: Mutex::default(),
            llm_requests: Mutex::default(),
            transcriptions: Mutex::default(),
            template_statuses: Mutex::default(),
            unsubscribed: Mutex::default(),
            next_id: AtomicU64::new(1),
            instance: rand::random(),
            config,
        }))
    }

    pub fn config(&self) -> &SimConfig {
        &self.0.config
    }
    pub fn messages(&self) -> Vec<SentMessage> {
        lock(&self.0.messages).clone()
    }
    pub fn reads(&self) -> Vec<ReadReceipt> {
        lock(&self.0.reads).clone()
    }
    pub fn uploads(&self) -> Vec<Upload> {
        lock(&self.0.uploads).clone()
    }
    pub fn webhooks(&self) -> Vec<WebhookDelivery> {
        lock(&self.0.webhooks).clone()
    }
    pub fn llm_requests(&self) -> Vec<LlmRequest> {
        lock(&self.0.llm_requests).clone()
    }
    pub fn transcriptions(&self) -> Vec<TranscriptionRequest> {
        lock(&self.0.transcriptions).clone()
    }
    pub fn add_fault(&self, fault: Fault) {
        lock(&self.0.faults).push(fault);
    }
    pub fn add_llm_fault(&self, fault: LlmFault) {
        lock(&self.0.llm_faults).push(fault);
    }
    /// Sets the status Meta lists template `name` in `language` with (`PAUSED`, `DISABLED`,
    /// `REJECTED`…; `APPROVED` again lifts it), as WhatsApp Manager or Meta's review would.
    pub fn set_template_status(&self, name: &str, language: &str, status: &str) {
        let key = (name.to_string(), language.to_ascii_lowercase());
        let mut statuses = lock(&self.0.template_statuses);
        if status.eq_ignore_ascii_case("APPROVED") {
            statuses.remove(&key);
        } else {
            statuses.insert(key, status.to_ascii_uppercase());
        }
    }
    /// The status Meta lists template `name` in `language` with.
    pub fn template_status(&self, name: &str, language: &str) -> String {
        lock(&self.0.template_statuses)
            .get(&(name.to_string(), language.to_ascii_lowercase()))
            .cloned()
            .unwrap_or_else(|| "APPROVED".into())
    }
    /// Forgets recorded traffic, queued faults and rate-limit state.
    pub fn reset(&self) {
        *lock(&self.0.limits) = Arc::new(graph::Limits::new(&self.0.config));
        lock(&self.0.faults).clear();
        lock(&self.0.llm_faults).clear();
        lock(&self.0.messages).clear();
        lock(&self.0.reads).clear();
        lock(&self.0.uploads).clear();
        lock(&self.0.webhooks).clear();
        lock(&self.0.llm_requests).clear();
        lock(&self.0.transcriptions).clear();
        lock(&self.0.template_statuses).clear();
        lock(&self.0.unsubscribed).clear();
    }

    fn next_id(&self) -> String {
        let n = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08X}{n:010}", self.0.instance)
    }
}

/// The bearer token of a request, if it has a non-empty one.
/// Whether the request's bearer token is one the simulator knows (any, when it was given none).
fn authorised(sim: &SimState, headers: &axum::http::HeaderMap) -> bool {
    let tokens = &sim.config().tokens;
    bearer(headers).is_some_and(|b| tokens.is_empty() || tokens.values().any(|t| t == b))
}

/// Meta's answer to an unknown access token (190), unless the request's is known;
/// `fbtrace_id` names the route that refused it.
fn unknown_token(
    sim: &SimState,
    headers: &axum::http::HeaderMap,
    fbtrace_id: &str,
) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    if authorised(sim, headers) {
        return None;
    }
    let body = serde_json::json!({"error": {"message": "Error validating access token.",
        "type": "OAuthException", "code": 190, "fbtrace_id": fbtrace_id}});
    Some((axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response())
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A poisoned lock only means a handler panicked mid-update of a log; keep serving.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Every route of the simulator.
pub fn router(state: SimState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/{version}/{phone_number_id}/messages",
            post(graph::messages),
        )
        .route("/v1/chat/completions", post(llm::chat_completions))
        .route("/chat/completions", post(llm::chat_completions))
        .route("/v1/messages", post(llm::anthropic_messages))
        .route("/v1/audio/transcriptions", post(llm::transcriptions))
        .route("/audio/transcriptions", post(llm::transcriptions))
        .route("/{version}/{id}", get(numbers::node))
        .route(
            "/{version}/{waba_id}/message_templates",
            get(templates::list),
        )
        .route(
            "/{version}/{waba_id}/subscribed_apps",
            get(subscriptions::list)
                .post(subscriptions::subscribe)
                .delete(subscriptions::unsubscribe),
        )
        .route("/_sim/media/{media_id}", get(media::download))
        .route(
            "/{version}/{phone_number_id}/media",
            // Meta takes documents up to 100 MB.
            post(media::upload).layer(axum::extract::DefaultBodyLimit::max(101 * 1024 * 1024)),
        )
        .route("/_sim/faults", post(add_fault))
        .route("/_sim/llm_faults", post(add_llm_fault))
        .route(
            "/_sim/messages",
            get(|State(s): State<SimState>| async move { Json(s.messages()) }),
        )
        .route(
            "/_sim/reads",
            get(|State(s): State<SimState>| async move { Json(s.reads()) }),
        )
        .route(
            "/_sim/uploads",
            get(|State(s): State<SimState>| async move { Json(s.uploads()) }),
        )
        .route(
            "/_sim/webhooks",
            get(|State(s): State<SimState>| async move { Json(s.webhooks()) }),
        )
        .route(
            "/_sim/llm_requests",
            get(|State(s): State<SimState>| async move { Json(s.llm_requests()) }),
        )
        .route(
            "/_sim/transcriptions",
            get(|State(s): State<SimState>| async move { Json(s.transcriptions()) }),
        )
        .route("/_sim/template_status", post(set_template_status))
        .route("/_sim/reset", post(reset))
        .with_state(state)
}

#[derive(Serialize, Deserialize)]
struct Queued {
    queued: usize,
}

async fn add_fault(State(s): State<SimState>, Json(fault): Json<Fault>) -> Json<Queued> {
    s.add_fault(fault);
    Json(Queued {
        queued: lock(&s.0.faults).len(),
    })
}

async fn add_llm_fault(State(s): State<SimState>, Json(fault): Json<LlmFault>) -> Json<Queued> {
    s.add_llm_fault(fault);
    Json(Queued {
        queued: lock(&s.0.llm_faults).len(),
    })
}

/// `POST /_sim/template_status` `{"name", "language", "status"}`.
#[derive(Deserialize)]
struct TemplateStatus {
    name: String,
    language: String,
    status: String,
}

async fn set_template_status(
    State(s): State<SimState>,
    Json(t): Json<TemplateStatus>,
) -> &'static str {
    s.set_template_status(&t.name, &t.language, &t.status);
    "ok"
}

async fn reset(State(s): State<SimState>) -> &'static str {
    s.reset();
    "ok"
}

/// Serves a fresh simulator built from `config` on `listener` until `shutdown` completes.
pub async fn run(
    config: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve(SimState::new(config), listener, shutdown).await
}

/// Serves `state` on `listener` until `shutdown` completes; hanging requests and pending status
/// webhooks are abandoned at that point.
pub async fn serve(
    state: SimState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "simulator listening");
    let token = state.0.shutdown.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            token.cancel();
        })
        .await
        .context("serving the simulator")
}
