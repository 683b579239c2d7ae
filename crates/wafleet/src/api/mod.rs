//! The agent API (`wafleet-api`): what a dashboard or an inbox calls for the human agents who
//! take conversations over. The same operations as `wafleetctl conversation`
//! ([`crate::agents`]), over HTTP with JSON, and the live feed of handovers, releases and
//! customers' messages to humans as server-sent events.
//!
//! Every request but `/healthz`, `/readyz`, `/metrics` and `/api/v1/openapi.yaml` carries
//! `Authorization: Bearer <token>` (made by `wafleetctl api-token add`, see
//! [`crate::store::api_tokens`]). A token scoped to some business numbers sees only their
//! conversations and events: another number's conversation answers 404, as one that does not
//! exist.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v1/conversations?owner=human&limit=50` | conversations, most recently active first |
//! | GET | `/api/v1/conversations/{id}?last=50` | one conversation and its transcript (redacted) |
//! | POST | `/api/v1/conversations/{id}/take` | a human takes it from the bot |
//! | POST | `/api/v1/conversations/{id}/release` | back to the bot |
//! | POST | `/api/v1/conversations/{id}/messages` | `{"text", "agent"?}` written to the customer; or a file (`media`), reply `buttons` or a `list` |
//! | GET | `/api/v1/conversations/{id}/media/{message_id}` | the file a customer sent (photo, voice note…), from Meta |
//! | POST | `/api/v1/channels/{pnid}/media?filename=` | a file (the body, of its `Content-Type`) uploaded to Meta for the number: `{"id", "type"}` to send as `media` |
//! | POST | `/api/v1/conversations/{id}/templates` | `{"name", "language", "params"?, "header"?, "buttons"?, "agent"?}` |
//! | POST | `/api/v1/channels/{pnid}/templates` | `{"to", "name", "language", "params"?, "header"?, "buttons"?, "agent"?, "answered_by"?}`: starts a conversation |
//! | GET | `/api/v1/events` | server-sent events; resumes after `Last-Event-ID` |
//! | GET, PUT | `/api/v1/channels[/{pnid}[/knowledge[/{title}]]]` | channels: see [`channels`] |
//! | GET | `/api/v1/openapi.yaml` | this API's OpenAPI 3.1 document (`openapi.yaml`), no token |
//!
//! A message or template needs an `Idempotency-Key` header (or `"reference"` in the body): the
//! same key in the same conversation records and sends nothing twice, so a dashboard can retry
//! after a timeout. Errors answer `{"error": "..."}`: 400 a bad request, 401 no or a bad token,
//! 404 no such conversation (for this token), 409 the conversation is with the bot, the 24-hour
//! window closed or the key was used for another text, 410 the customer was erased or their
//! number passed to someone else, 422 a file, buttons or list Meta would refuse (the field is
//! named), 503 Postgres or Redis out of reach (retry). Changing a channel
//! needs an admin token (403 otherwise).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use wafleet_core::format::template::{Button, Header, Params, TemplateText};

use crate::agents::{self, AgentError};
use crate::config::{RedisLayout, Secret, millis, parsed, positive, required, var};
use crate::shared_redis::SharedRedis;
use crate::store::api_tokens::{self, Scope};
use crate::streams::Keys;

mod channels;

/// The API's settings, from the environment.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `WAFLEET_API_ADDR` (default `127.0.0.1:8081`).
    pub listen: SocketAddr,
    pub database_url: Secret<String>,
    pub redis: RedisLayout,
    /// `WAFLEET_DATABASE_POOL_SIZE` (default 10).
    pub database_pool_size: u32,
    pub plan_cache_mode: crate::db::PlanCacheMode,
    /// `WAFLEET_API_MAX_EVENT_STREAMS` (default 256): event streams open at once, each holding
    /// a Redis connection of its own; one more is answered 503.
    pub max_event_streams: usize,
    /// `WAFLEET_API_REQUEST_TIMEOUT_MS` (default 10,000) for every request but the event stream.
    pub request_timeout: Duration,
    /// `WAFLEET_API_HEADER_TIMEOUT_MS` (default 30,000): bound on the wait for a request's head;
    /// a connection that sent part of one is closed and counted, one idle that long closed
    /// ([`crate::serve::serve_connection`]).
    pub header_timeout: Duration,
    /// `WAFLEET_SHUTDOWN_GRACE_SECS` (default 20): how long SIGTERM waits for requests.
    pub shutdown_grace: Duration,
    /// `WAFLEET_ENCRYPTION_KEY` (and `WAFLEET_ENCRYPTION_KEY_PREVIOUS`) when set: needed only to
    /// change channels (their secrets are sealed with it) and to fetch customers' media (with the
    /// channel's access token).
    pub cipher: Option<crate::crypto::Cipher>,
    /// Where customers' media is fetched (`WAFLEET_GRAPH_BASE_URL`, `WAFLEET_GRAPH_API_VERSION`,
    /// `WAFLEET_GRAPH_TIMEOUT_MS`, as for the workers).
    pub graph: crate::stages::process::GraphSettings,
    /// `WAFLEET_API_MEDIA_MAX_BYTES` (default 16 MiB): the largest customer's file the API
    /// passes on to an agent, and the largest file an agent uploads (under Meta's bound for its
    /// kind).
    pub media_max_bytes: u64,
}

impl ApiSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let listen = var("WAFLEET_API_ADDR").unwrap_or_else(|| "127.0.0.1:8081".into());
        Ok(Self {
            listen: listen
                .parse()
                .with_context(|| format!("WAFLEET_API_ADDR={listen:?} is not an address"))?,
            database_url: Secret::new(required("DATABASE_URL")?),
            redis: RedisLayout::from_env()?,
            database_pool_size: positive("WAFLEET_DATABASE_POOL_SIZE", 10)?,
            plan_cache_mode: parsed("WAFLEET_PG_PLAN_CACHE_MODE", Default::default())?,
            max_event_streams: positive("WAFLEET_API_MAX_EVENT_STREAMS", 256)?,
            request_timeout: millis("WAFLEET_API_REQUEST_TIMEOUT_MS", Duration::from_secs(10))?,
            header_timeout: millis("WAFLEET_API_HEADER_TIMEOUT_MS", Duration::from_secs(30))?,
            shutdown_grace: Duration::from_secs(positive("WAFLEET_SHUTDOWN_GRACE_SECS", 20)?),
            cipher: var("WAFLEET_ENCRYPTION_KEY")
                .map(|_| crate::config::cipher_from_env())
                .transpose()?,
            graph: crate::stages::process::GraphSettings::from_env()?,
            media_max_bytes: positive("WAFLEET_API_MEDIA_MAX_BYTES", 16 * 1024 * 1024)?,
        })
    }
}

struct AppState {
    pg: PgPool,
    redis: SharedRedis,
    /// Dedicated connections for the event streams' blocking reads.
    blocking: deadpool_redis::Pool,
    keys: Keys,
    event_streams: Arc<tokio::sync::Semaphore>,
    metrics: PrometheusHandle,
    /// Cancelled on shutdown: open event streams end, so the drain does not wait on them.
    stopping: CancellationToken,
    /// Seals channels' secrets; without it channels cannot be changed nor media fetched.
    cipher: Option<crate::crypto::Cipher>,
    graph: crate::graph::GraphClient,
    media_max_bytes: u64,
    /// Templates as Meta lists them, to check a template's status and parameters before it is
    /// recorded (kept for minutes, as the workers keep them, and dropped in every process when
    /// Meta changes a template's status).
    wordings: crate::stages::wording::Wordings,
}

/// Serves the API on `listener` until `shutdown` completes, then drains requests for up to the
/// grace period.
pub async fn run(
    settings: ApiSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pg = crate::db::connect(
        settings.database_url.expose(),
        settings.database_pool_size,
        settings.plan_cache_mode,
    )
    .await?;
    crate::db::migrate(&pg).await?;
    let url = settings.redis.redis_url.expose();
    // Agents' sends enqueue on a partition: another count than the workers' strands them.
    crate::partition_count::check_at_start(
        url,
        &settings.redis.redis_prefix,
        settings.redis.partitions,
    )
    .await?;
    let redis =
        SharedRedis::new(url, crate::shared_redis::CONNECT_TIMEOUT).context("parsing REDIS_URL")?;
    // A count changed under the running process: it stops taking requests and exits with the
    // mismatch (see `partition_count`).
    let watch = crate::partition_count::Watch::spawn(
        redis.clone(),
        &settings.redis.redis_prefix,
        settings.redis.partitions,
        settings.redis.partitions_check_every,
    );
    let found = watch.found();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = found => {}
        }
    };
    let keys = Keys::new(
        settings.redis.redis_prefix.clone(),
        settings.redis.partitions,
    );
    let state = AppState {
        pg,
        wordings: crate::stages::wording::Wordings::shared(redis.clone(), &keys),
        redis,
        blocking: crate::shared_redis::blocking_pool(url, settings.max_event_streams)?,
        keys,
        event_streams: Arc::new(tokio::sync::Semaphore::new(settings.max_event_streams)),
        metrics: crate::telemetry::metrics_handle(),
        stopping: CancellationToken::new(),
        cipher: settings.cipher,
        graph: crate::graph::GraphClient::new(
            settings.graph.base_url,
            settings.graph.version,
            settings.graph.timeout,
        ),
        media_max_bytes: settings.media_max_bytes,
    };
    let stopping = state.stopping.clone();
    let app = router(Arc::new(state), settings.request_timeout);
    tracing::info!(addr = %listener.local_addr()?, "agent API listening");
    // Open event streams end when the drain starts: they would hold it for the whole grace.
    let head = crate::serve::HeadTimeout {
        after: settings.header_timeout,
        setting: "WAFLEET_API_HEADER_TIMEOUT_MS",
        counter: metrics::counter!("wafleet_api_header_timeouts_total"),
    };
    crate::serve_draining(
        listener,
        app,
        head,
        shutdown,
        settings.shutdown_grace,
        stopping,
    )
    .await;
    tracing::info!("agent API stopped");
    watch.finish().await
}

fn router(state: Arc<AppState>, request_timeout: Duration) -> Router {
    let bounded = Router::new()
        .route("/api/v1/conversations", get(list))
        .route("/api/v1/conversations/{id}", get(show))
        .route("/api/v1/conversations/{id}/take", post(take))
        .route("/api/v1/conversations/{id}/release", post(release))
        .route("/api/v1/conversations/{id}/messages", post(message))
        .route("/api/v1/conversations/{id}/templates", post(template))
        .route("/api/v1/channels/{pnid}/templates", post(outreach))
        .route("/api/v1/conversations/{id}/media/{message_id}", get(media))
        // Bounded by the handler, by the file's type (up to Meta's 100 MB for a document).
        .route(
            "/api/v1/channels/{pnid}/media",
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/api/v1/openapi.yaml", get(openapi))
        .merge(channels::routes())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ));
    Router::new()
        // An event stream lasts as long as the dashboard keeps it open.
        .route("/api/v1/events", get(events))
        .merge(bounded)
        // An agent's message is at most a few thousand characters; a template's parameters less.
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024))
        .layer(axum::middleware::map_response(count))
        .with_state(state)
}

/// Counts every answer by its status.
async fn count(res: Response) -> Response {
    metrics::counter!("wafleet_api_requests_total", "status" => res.status().as_u16().to_string())
        .increment(1);
    res
}

/// An error, answered as `{"error": "..."}` with its status (and `merged_into`, the surviving
/// conversation, for a conversation a number change merged into another).
#[derive(Debug)]
struct ApiError(StatusCode, String, Option<i64>);

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        Self(status, message, None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.2 {
            Some(into) => json!({ "error": self.1, "merged_into": into }),
            None => json!({ "error": self.1 }),
        };
        let mut res = (self.0, Json(body)).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("a header"),
            );
        }
        res
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "{what}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{what}: try again"),
    )
}

/// The channel's access token for a Graph call the API makes itself (a customer's file, an
/// agent's upload); `fail` answers, logs and counts a token this process cannot use.
async fn channel_token(
    state: &AppState,
    cipher: &crate::crypto::Cipher,
    pnid: &str,
    fail: impl Fn(&'static str, String) -> ApiError,
) -> Result<crate::config::Secret<String>, ApiError> {
    crate::store::channels::access_token(&state.pg, cipher, pnid)
        .await
        .map_err(|e| {
            if e.downcast_ref::<sqlx::Error>().is_some() {
                return pg_down(format!("{e:#}"));
            }
            // Not Postgres: the token was sealed with another key than this process's (or
            // changed by hand), and a retry fails the same way.
            crate::store::channels::report_unreadable(pnid, "access_token");
            fail(
                "unreadable_token",
                format!(
                    "channel {pnid}'s access token does not decrypt with this API process's \
                     WAFLEET_ENCRYPTION_KEY"
                ),
            )
        })?
        .ok_or_else(|| fail("no_token", format!("channel {pnid} has no access token")))
}

fn pg_down(e: impl std::fmt::Display) -> ApiError {
    unavailable("Postgres out of reach", e)
}

fn redis_down(e: impl std::fmt::Display) -> ApiError {
    unavailable("Redis out of reach", e)
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let status = match &e {
            AgentError::NoConversation(_) | AgentError::NoChannel(_) => StatusCode::NOT_FOUND,
            AgentError::NotAllowed(_) => StatusCode::CONFLICT,
            AgentError::BadPhone(_) => StatusCode::BAD_REQUEST,
            AgentError::Erased(_) | AgentError::NumberMoved(_) => StatusCode::GONE,
            AgentError::WithTheBot(_)
            | AgentError::WindowClosed { .. }
            | AgentError::ReferenceTaken { .. } => StatusCode::CONFLICT,
            AgentError::Empty | AgentError::NoTemplateName => StatusCode::BAD_REQUEST,
            AgentError::TemplateMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AgentError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // Postgres refusing the data itself (class 22: a NUL, an encoding) is the request's
            // fault: retrying it would fail the same way.
            AgentError::Db(sqlx::Error::Database(d))
                if d.code().is_some_and(|c| c.starts_with("22")) =>
            {
                StatusCode::BAD_REQUEST
            }
            AgentError::Db(_) => return pg_down(e),
            AgentError::Redis(_) | AgentError::RedisPool(_) => {
                return redis_down(e);
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// The bearer token of a request, if it has one. The scheme's name is case-insensitive
/// (RFC 9110 §11.1: `bearer`, `BEARER` are `Bearer` too).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim_start();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller's token, checked against Postgres on every request (a revoked token stops at once).
struct Authed(Scope);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is needed (wafleetctl api-token add)".into(),
            )
        };
        let token = bearer(&parts.headers).ok_or_else(unauthorized)?;
        match api_tokens::authenticate(&state.pg, token).await {
            Ok(Some(scope)) => Ok(Authed(scope)),
            Ok(None) => {
                metrics::counter!("wafleet_api_unauthorized_total").increment(1);
                Err(unauthorized())
            }
            Err(e) => Err(pg_down(e)),
        }
    }
}

/// The conversation, if it exists and the token reaches its number; else 404 (a conversation of
/// another number is not told apart from one that does not exist).
async fn reachable(state: &AppState, scope: &Scope, id: i64) -> Result<(), ApiError> {
    let number = crate::store::conversations::phone_number_id(&state.pg, id)
        .await
        .map_err(pg_down)?;
    match number {
        Some(n) if scope.reaches(&n) => Ok(()),
        Some(_) => Err(AgentError::NoConversation(id).into()),
        None => {
            // Merged away by a customer's number change: 404 still (this id is gone for good,
            // and a redirect would repeat a take or a message at another id unasked), naming
            // the conversation that holds its history now, when this token reaches it.
            use crate::store::conversations::{merged_into, phone_number_id};
            if let Some(into) = merged_into(&state.pg, id).await.map_err(pg_down)?
                && phone_number_id(&state.pg, into)
                    .await
                    .map_err(pg_down)?
                    .is_some_and(|n| scope.reaches(&n))
            {
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    format!("conversation {id} was merged into conversation {into}"),
                    Some(into),
                ));
            }
            Err(AgentError::NoConversation(id).into())
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    /// `human` for the conversations humans own; anything else or nothing: all.
    owner: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let human_only = match q.owner.as_deref() {
        None | Some("all") => false,
        Some("human") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("owner is `human` or `all`, not {other:?}"),
            ));
        }
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let list =
        crate::store::agents::conversations(&state.pg, human_only, &scope.phone_number_ids, limit)
            .await
            .map_err(pg_down)?;
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct ShowQuery {
    last: Option<i64>,
}

async fn show(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(id): Path<i64>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, ApiError> {
    reachable(&state, &scope, id).await?;
    let last = q.last.unwrap_or(50).clamp(1, 1000);
    let lines = crate::store::agents::transcript(&state.pg, id, last)
        .await
        .map_err(pg_down)?
        .ok_or(AgentError::NoConversation(id))?;
    Ok(Json(json!({ "conversation_id": id, "lines": lines })).into_response())
}

async fn take(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    owner_change(&state, &scope, id, true).await
}

async fn release(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    owner_change(&state, &scope, id, false).await
}

async fn owner_change(
    state: &AppState,
    scope: &Scope,
    id: i64,
    take: bool,
) -> Result<Response, ApiError> {
    let mut con = writable(state, scope, id).await?;
    let changed = if take {
        agents::take(&state.pg, &mut con, &state.keys, id).await?
    } else {
        agents::release(&state.pg, &mut con, &state.keys, id).await?
    };
    tracing::info!(token = %scope.name, conversation_id = id, take, changed, "owner changed through the API");
    Ok(Json(json!({
        "conversation_id": id,
        "owner": if take { "human" } else { "bot" },
        "changed": changed,
    }))
    .into_response())
}

/// Unknown fields are refused in every body: a misspelt `reference` must not send a retry
/// twice, nor a misspelt `params` a template without its values.
/// `text` alone; or `media` (a file, without `text`: its caption is `media.caption`); or
/// `buttons` or `list` with `text` as their body and an optional `header` and `footer`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    text: Option<String>,
    media: Option<wafleet_core::outgoing::Media>,
    buttons: Option<Vec<wafleet_core::outgoing::Button>>,
    list: Option<wafleet_core::outgoing::List>,
    header: Option<String>,
    footer: Option<String>,
    reference: Option<String>,
    agent: Option<String>,
}

impl MessageBody {
    /// Every text the body holds, for [`no_nul`].
    fn texts(&self) -> Vec<Option<&str>> {
        use wafleet_core::outgoing::Media;
        let mut texts = vec![
            self.text.as_deref(),
            self.header.as_deref(),
            self.footer.as_deref(),
            self.agent.as_deref(),
            self.reference.as_deref(),
        ];
        if let Some(Media {
            kind,
            link,
            id,
            caption,
            filename,
        }) = &self.media
        {
            texts.extend([
                Some(kind.as_str()),
                link.as_deref(),
                id.as_deref(),
                caption.as_deref(),
                filename.as_deref(),
            ]);
        }
        for b in self.buttons.iter().flatten() {
            texts.extend([Some(b.id.as_str()), Some(b.title.as_str())]);
        }
        if let Some(list) = &self.list {
            texts.push(Some(list.button.as_str()));
            for section in &list.sections {
                texts.push(section.title.as_deref());
                for row in &section.rows {
                    texts.extend([
                        Some(row.id.as_str()),
                        Some(row.title.as_str()),
                        row.description.as_deref(),
                    ]);
                }
            }
        }
        texts
    }

    /// The file, buttons or list the body holds, if any; 422 naming the field when the fields
    /// do not go together.
    fn content(&self) -> Result<Option<wafleet_core::outgoing::Content<'_>>, ApiError> {
        use wafleet_core::outgoing::Content;
        let unprocessable = |message: &str| {
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                message.to_string(),
            ))
        };
        let given = [
            self.media.is_some(),
            self.buttons.is_some(),
            self.list.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return unprocessable("a message takes one of media, buttons or list");
        }
        let body = self.text.as_deref().unwrap_or_default();
        let (header, footer) = (self.header.as_deref(), self.footer.as_deref());
        if let Some(media) = &self.media {
            if self.text.is_some() {
                return unprocessable("text: a file's text is its media.caption");
            }
            if header.is_some() || footer.is_some() {
                return unprocessable("header, footer: only with buttons or a list");
            }
            return Ok(Some(Content::Media(media)));
        }
        if let Some(buttons) = &self.buttons {
            return Ok(Some(Content::Buttons {
                body,
                buttons,
                header,
                footer,
            }));
        }
        if let Some(list) = &self.list {
            return Ok(Some(Content::List {
                body,
                list,
                header,
                footer,
            }));
        }
        if header.is_some() || footer.is_some() {
            return unprocessable("header, footer: only with buttons or a list");
        }
        if self.text.is_none() {
            return unprocessable(
                "text: a message needs its text, or one of media, buttons or list",
            );
        }
        Ok(None)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    name: String,
    language: String,
    /// The body's parameters: an array in order (`{{1}}`, `{{2}}`…), or an object by name for
    /// a template with named parameters (`{"order_id": "1042"}`).
    #[serde(default)]
    params: Params,
    /// The header's media or text parameters (`{"type": "document", "link", "filename"}`).
    header: Option<Header>,
    /// The buttons' parameters (`{"index", "sub_type": "url", "parameter"}`…).
    #[serde(default)]
    buttons: Vec<Button>,
    reference: Option<String>,
    agent: Option<String>,
}

impl TemplateBody {
    /// Checks the template (and `more` text of the request) and answers the request's
    /// idempotency key.
    fn check(&self, headers: &HeaderMap, more: Option<&str>) -> Result<String, ApiError> {
        let header_texts: Vec<&str> = match &self.header {
            Some(Header::Text { parameters }) => parameters.texts(),
            Some(Header::Image(m) | Header::Document(m) | Header::Video(m)) => {
                [&m.link, &m.id, &m.filename]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect()
            }
            None => Vec::new(),
        };
        no_nul(
            [
                Some(self.name.as_str()),
                Some(self.language.as_str()),
                self.agent.as_deref(),
                self.reference.as_deref(),
                more,
            ]
            .into_iter()
            .chain(self.params.texts().into_iter().map(Some))
            .chain(header_texts.into_iter().map(Some))
            .chain(self.buttons.iter().map(Button::value).map(Some)),
        )?;
        // Before the template is read from Meta: a header or buttons that cannot be right.
        wafleet_core::format::template::check_request(
            self.header.as_ref(),
            &self.params,
            &self.buttons,
        )
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
        let reference = reference(headers, self.reference.clone())?;
        if self.name.trim().is_empty() || self.language.trim().is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a template needs its name and language".into(),
            ));
        }
        Ok(reference)
    }
}

/// The request's idempotency key: the `Idempotency-Key` header, else `reference` in the body.
fn reference(headers: &HeaderMap, body: Option<String>) -> Result<String, ApiError> {
    let header = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    header
        .or(body)
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty() && r.len() <= 200)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "give an Idempotency-Key header (up to 200 characters): a retry with the same key \
                 sends nothing twice"
                    .into(),
            )
        })
}

fn queued(id: i64, reference: &str, q: &agents::Queued) -> Response {
    let status = if q.fresh {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({
            "conversation_id": id,
            "reference": reference,
            "part_ids": q.part_ids,
            "states": q.states,
            "fresh": q.fresh,
        })),
    )
        .into_response()
}

/// A JSON body, or 400 naming what is wrong with it.
fn body<T: serde::de::DeserializeOwned>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, without_value(&e.body_text())))?;
    Ok(body)
}

/// serde's "invalid type: string "s3cr3t", expected a sequence" without the value it quotes,
/// which can be a secret given in the wrong shape (`"app_secrets": "…"`) or a customer's text:
/// what is wrong and where stays (`app_secrets: invalid type, expected a sequence at line 1…`).
fn without_value(text: &str) -> String {
    for phrase in ["invalid type: ", "invalid value: "] {
        if let Some(start) = text.find(phrase)
            && let Some(end) = text.rfind(", expected")
            && end > start
        {
            return format!(
                "{}{}{}",
                &text[..start],
                phrase.trim_end_matches(": "),
                &text[end..]
            );
        }
    }
    text.to_string()
}

/// Text Postgres would refuse (a NUL character) is refused here, as the request's fault.
fn no_nul<'a>(texts: impl IntoIterator<Item = Option<&'a str>>) -> Result<(), ApiError> {
    if texts.into_iter().flatten().any(|t| t.contains('\0')) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "text with a NUL character (\\u0000) cannot be stored or sent".into(),
        ));
    }
    Ok(())
}

async fn message(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(id): Path<i64>,
    headers: HeaderMap,
    b: Result<Json<MessageBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    no_nul(b.texts())?;
    let reference = reference(&headers, b.reference.clone())?;
    // Checked before the conversation is looked at: a message Meta would refuse is refused
    // here, whoever owns the conversation.
    let content = b.content()?;
    if let Some(c) = &content {
        c.check().map_err(AgentError::from)?;
    }
    let mut con = writable(&state, &scope, id).await?;
    let q = match content {
        Some(content) => {
            agents::reply_content(
                &state.pg,
                &mut con,
                &state.keys,
                &agents::ContentReply {
                    conversation_id: id,
                    content,
                    reference: &reference,
                    agent: b.agent.as_deref(),
                },
            )
            .await?
        }
        None => {
            agents::reply(
                &state.pg,
                &mut con,
                &state.keys,
                &agents::Reply {
                    conversation_id: id,
                    text: b.text.as_deref().unwrap_or_default(),
                    reference: &reference,
                    agent: b.agent.as_deref(),
                },
            )
            .await?
        }
    };
    Ok(queued(id, &reference, &q))
}

async fn template(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(id): Path<i64>,
    headers: HeaderMap,
    b: Result<Json<TemplateBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let reference = b.check(&headers, None)?;
    let mut con = writable(&state, &scope, id).await?;
    let definition = match crate::store::conversations::phone_number_id(&state.pg, id)
        .await
        .map_err(pg_down)?
    {
        Some(pnid) => state.template_definition(&pnid, &b).await?,
        None => None,
    };
    let q = agents::template(
        &state.pg,
        &mut con,
        &state.keys,
        &agents::Template {
            conversation_id: id,
            name: b.name.trim(),
            language: b.language.trim(),
            body_params: &b.params,
            header: b.header.as_ref(),
            buttons: &b.buttons,
            definition: definition.as_ref(),
            reference: &reference,
            agent: b.agent.as_deref(),
        },
    )
    .await?;
    Ok(queued(id, &reference, &q))
}

/// A template to a phone: [`TemplateBody`]'s fields beside `to` and `answered_by`, each named
/// here (serde cannot refuse unknown fields through a flattened struct).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutreachBody {
    /// The customer's phone, any notation.
    to: String,
    /// `human` (default: the conversation is taken) or `bot`: who answers the customer's reply.
    answered_by: Option<String>,
    name: String,
    language: String,
    #[serde(default)]
    params: Params,
    header: Option<Header>,
    #[serde(default)]
    buttons: Vec<Button>,
    reference: Option<String>,
    agent: Option<String>,
}

impl OutreachBody {
    /// The template part, and the rest.
    fn split(self) -> (TemplateBody, String, Option<String>) {
        let template = TemplateBody {
            name: self.name,
            language: self.language,
            params: self.params,
            header: self.header,
            buttons: self.buttons,
            reference: self.reference,
            agent: self.agent,
        };
        (template, self.to, self.answered_by)
    }
}

impl AppState {
    /// The approved template `t` names on channel `pnid`, to check its parameters against
    /// ([`agents::template_definition`]); `None` when it cannot be read (the send goes unchecked).
    async fn template_definition(
        &self,
        pnid: &str,
        t: &TemplateBody,
    ) -> Result<Option<TemplateText>, ApiError> {
        let definition = agents::template_definition(
            &self.pg,
            &self.wordings,
            &self.graph,
            self.cipher.as_ref(),
            pnid,
            t.name.trim(),
            t.language.trim(),
        )
        .await?;
        Ok(definition)
    }
}

/// A template to a customer by their phone, starting their conversation if they have none.
async fn outreach(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(pnid): Path<String>,
    headers: HeaderMap,
    b: Result<Json<OutreachBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let (t, to, answered_by) = body(b)?.split();
    let reference = t.check(&headers, Some(&to))?;
    if !scope.reaches(&pnid) {
        return Err(AgentError::NoChannel(pnid).into());
    }
    let answerer = match answered_by.as_deref() {
        None | Some("human") => agents::Answerer::Human,
        Some("bot") => agents::Answerer::Bot,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("answered_by is `human` or `bot`, not {other:?}"),
            ));
        }
    };
    let definition = state.template_definition(&pnid, &t).await?;
    let mut con = state.redis.get().await.map_err(redis_down)?;
    let (id, q) = agents::outreach(
        &state.pg,
        &mut con,
        &state.keys,
        &agents::Outreach {
            phone_number_id: &pnid,
            to: &to,
            name: t.name.trim(),
            language: t.language.trim(),
            body_params: &t.params,
            header: t.header.as_ref(),
            buttons: &t.buttons,
            definition: definition.as_ref(),
            reference: &reference,
            agent: t.agent.as_deref(),
            answerer,
        },
    )
    .await?;
    tracing::info!(token = %scope.name, channel = %pnid, conversation_id = id, fresh = q.fresh,
        "a template to a customer by phone through the API");
    Ok(queued(id, &reference, &q))
}

/// The file a customer sent in a conversation (a photo, a voice note, a document), streamed from
/// Meta with the channel's token; never stored. Served so a browser neither runs nor sniffs it.
async fn media(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path((id, message_id)): Path<(i64, i64)>,
) -> Result<Response, ApiError> {
    use crate::graph::{MediaError, OpenMedia};
    // One lookup: the message, its conversation's number (a number the token does not reach
    // answers 404 as a conversation that does not exist) and its media id.
    let (pnid, media_id) = crate::store::agents::media_of(&state.pg, id, message_id)
        .await
        .map_err(pg_down)?
        .filter(|(pnid, _)| scope.reaches(pnid))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("conversation {id} has no media message {message_id}"),
            )
        })?;
    // A file not served for want of a usable token is logged and counted like one Meta did not
    // give: an agent's 503 alone tells the operator nothing.
    let not_fetched = |result: &'static str, error: String| {
        metrics::counter!("wafleet_api_media_total", "result" => result).increment(1);
        tracing::warn!(conversation_id = id, message_id, channel = %pnid, error = %error,
            "a customer's file was not fetched");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error)
    };
    let Some(cipher) = &state.cipher else {
        return Err(not_fetched(
            "no_key",
            "this API process has no WAFLEET_ENCRYPTION_KEY: it cannot use the channel's token"
                .into(),
        ));
    };
    let media_id = media_id.ok_or_else(|| {
        ApiError::new(
            StatusCode::GONE,
            "the file is no longer known (its customer was erased)".into(),
        )
    })?;
    let token = channel_token(&state, cipher, &pnid, not_fetched).await?;
    let opened = state
        .graph
        .open_media(token.expose(), &media_id, state.media_max_bytes, &[])
        .await;
    let OpenMedia {
        mime_type,
        length,
        response,
    } = match opened {
        Ok(open) => open,
        Err(e) => {
            let result = e.label();
            metrics::counter!("wafleet_api_media_total", "result" => result).increment(1);
            tracing::warn!(conversation_id = id, message_id, error = %e, "a customer's file was not fetched");
            return Err(match e {
                MediaError::Rejected {
                    http_status: 404, ..
                }
                | MediaError::Rejected { code: 100, .. } => {
                    ApiError::new(StatusCode::NOT_FOUND, "Meta no longer has this file".into())
                }
                other => ApiError::new(StatusCode::BAD_GATEWAY, other.to_string()),
            });
        }
    };
    metrics::counter!("wafleet_api_media_total", "result" => "served").increment(1);
    // Past the limit the stream ends in an error (the client sees a cut download), for a file
    // whose size Meta did not state.
    let max = state.media_max_bytes;
    let mut seen = 0u64;
    let body = futures::StreamExt::map(response.bytes_stream(), move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > max {
            return Err(std::io::Error::other(
                "the file is larger than WAFLEET_API_MEDIA_MAX_BYTES",
            ));
        }
        Ok(chunk)
    });
    let inline = ["image/", "audio/", "video/"]
        .iter()
        .any(|p| mime_type.starts_with(p));
    let mut res = axum::body::Body::from_stream(body).into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(&mime_type)
            .unwrap_or(header::HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(n) = length {
        headers.insert(header::CONTENT_LENGTH, n.into());
    }
    headers.insert(
        header::CONTENT_DISPOSITION,
        header::HeaderValue::from_static(if inline { "inline" } else { "attachment" }),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, no-store"),
    );
    Ok(res)
}

#[derive(Deserialize)]
struct UploadQuery {
    /// The file's name, as a document shows it to the customer.
    filename: Option<String>,
}

/// A file an agent will send, uploaded to Meta for the number (`POST /{version}/{pnid}/media`
/// with the channel's token): the request's body, of its `Content-Type` (a type WhatsApp takes,
/// else 415), streamed through and bounded by Meta's size for its kind and
/// `WAFLEET_API_MEDIA_MAX_BYTES` (413). Answers Meta's media id and the `media.type` to send it
/// as. Never stored here; Meta keeps an upload for 30 days (its public docs, not our reference).
async fn upload(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(pnid): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let counted = |result: &'static str| {
        metrics::counter!("wafleet_api_uploads_total", "result" => result).increment(1);
    };
    if !scope.reaches(&pnid) {
        return Err(AgentError::NoChannel(pnid).into());
    }
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|m| {
            m.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let Some((kind, meta_max)) = wafleet_core::outgoing::upload_kind(&mime) else {
        counted("unsupported");
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the Content-Type must be a type WhatsApp takes: image/jpeg, image/png, image/webp \
             (a sticker), audio/aac, audio/amr, audio/mpeg, audio/mp4, audio/ogg, video/mp4, \
             video/3gpp, application/pdf, text/plain or an Office document's"
                .into(),
        ));
    };
    let max = meta_max.min(state.media_max_bytes);
    let too_large = || {
        counted("too_large");
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a file sent as {kind} may have at most {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let filename = q.filename.as_deref().map(str::trim).unwrap_or_default();
    if !wafleet_core::outgoing::upload_filename_ok(filename) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "filename: at most 240 bytes, without quotes, slashes or line breaks".into(),
        ));
    }
    let filename = if filename.is_empty() { kind } else { filename };
    let not_uploaded = |result: &'static str, error: String| {
        counted(result);
        tracing::warn!(channel = %pnid, error = %error, "an agent's file was not uploaded");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error)
    };
    let Some(cipher) = &state.cipher else {
        return Err(not_uploaded(
            "no_key",
            "this API process has no WAFLEET_ENCRYPTION_KEY: it cannot use the channel's token"
                .into(),
        ));
    };
    let known = crate::store::channels::summaries(&state.pg, std::slice::from_ref(&pnid))
        .await
        .map_err(pg_down)?;
    if known.is_empty() {
        return Err(AgentError::NoChannel(pnid).into());
    }
    let token = channel_token(&state, cipher, &pnid, not_uploaded).await?;
    // Counted as it streams: a body without Content-Length (chunked) is cut at the bound too.
    let seen = Arc::new(AtomicU64::new(0));
    let stream = {
        let seen = seen.clone();
        futures::StreamExt::map(body.into_data_stream(), move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            let n = seen.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            if n > max {
                return Err(std::io::Error::other("the file is larger than its bound"));
            }
            Ok(chunk)
        })
    };
    let uploaded = state
        .graph
        .upload_media(
            token.expose(),
            &pnid,
            &mime,
            filename,
            reqwest::Body::wrap_stream(stream),
        )
        .await;
    match uploaded {
        Ok(id) => {
            counted("uploaded");
            tracing::info!(token = %scope.name, channel = %pnid, kind, bytes = seen.load(Ordering::Relaxed),
                "an agent's file was uploaded to Meta");
            Ok(Json(json!({ "id": id, "type": kind, "mime_type": mime })).into_response())
        }
        Err(_) if seen.load(Ordering::Relaxed) > max => Err(too_large()),
        Err(e) => {
            let result = match &e {
                crate::graph::GraphCallError::Rejected { .. } => "rejected",
                crate::graph::GraphCallError::Transport { .. } => "transport",
            };
            counted(result);
            tracing::warn!(channel = %pnid, error = %e, "an agent's file was not uploaded");
            Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
        }
    }
}

/// Before an agent writes: the conversation is the token's, and Redis (where the send is
/// queued) is there.
async fn writable(
    state: &AppState,
    scope: &Scope,
    id: i64,
) -> Result<crate::shared_redis::SharedConnection, ApiError> {
    reachable(state, scope, id).await?;
    state.redis.get().await.map_err(redis_down)
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Where to resume, like `Last-Event-ID` (which wins): the id of the last event received.
    after: Option<String>,
}

/// How long one blocking read of the event stream waits before it reads again.
const EVENTS_BLOCK: Duration = Duration::from_secs(5);

/// The dashboard stream (`P:{events}:handover`) as server-sent events: `id` the stream entry id,
/// `event` the kind (`handover`, `release`, `message`), `data` the JSON event (ids, never text).
/// From `Last-Event-ID` (or `?after=`) when given, else from now; only the token's numbers.
async fn events(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let permit = state
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event streams open (WAFLEET_API_MAX_EVENT_STREAMS)".into(),
            )
        })?;
    let stream_key = state.keys.handover_stream();
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.after);
    let cursor = match after {
        Some(id) if is_stream_id(&id) => id,
        Some(id) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not an event id"),
            ));
        }
        // From now: the newest entry's id, so nothing added between two reads is missed.
        None => {
            let mut con = state.redis.get().await.map_err(redis_down)?;
            let last: redis::streams::StreamRangeReply = con
                .xrevrange_count(&stream_key, "+", "-", 1)
                .await
                .map_err(redis_down)?;
            last.ids
                .first()
                .map_or_else(|| "0-0".to_string(), |e| e.id.clone())
        }
    };
    let token = bearer(&headers).unwrap_or_default().to_string();
    tracing::info!(token = %scope.name, "event stream opened");
    metrics::gauge!("wafleet_api_event_streams").increment(1.0);
    // The position first, without an event: a client that drops before the first event
    // reconnects from here (`Last-Event-ID`), not from whenever it comes back.
    let start = Event::default().id(cursor.clone()).comment("resume point");
    let feed = Feed {
        state: state.clone(),
        scope,
        token,
        stream_key,
        cursor,
        ready: VecDeque::from([start]),
        _permit: permit,
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<_, Infallible>(event), feed))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn is_stream_id(id: &str) -> bool {
    // What Redis takes: two unsigned 64-bit numbers.
    let number = |s: &str| !s.starts_with('+') && s.parse::<u64>().is_ok();
    id.split_once('-')
        .is_some_and(|(ms, seq)| number(ms) && number(seq))
}

/// One open event stream: where it is on the Redis stream, and events read but not yet sent.
struct Feed {
    state: Arc<AppState>,
    scope: Scope,
    /// Checked again after every read: a token revoked while its stream is open gets nothing
    /// more.
    token: String,
    stream_key: String,
    cursor: String,
    ready: VecDeque<Event>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Feed {
    fn drop(&mut self) {
        metrics::gauge!("wafleet_api_event_streams").decrement(1.0);
    }
}

impl Feed {
    /// The next event for this token; `None` ends the stream (shutdown, or Redis failed: the
    /// dashboard reconnects with `Last-Event-ID` and misses nothing).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let read = async {
                let mut con = self.state.blocking.get().await.map_err(|e| e.to_string())?;
                let opts = StreamReadOptions::default()
                    .count(100)
                    .block(EVENTS_BLOCK.as_millis() as usize);
                let reply: Option<StreamReadReply> = con
                    .xread_options(&[&self.stream_key], &[&self.cursor], &opts)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(reply)
            };
            let reply = tokio::select! {
                _ = self.state.stopping.cancelled() => return None,
                r = read => r,
            };
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream read failed; closing it");
                    metrics::counter!("wafleet_api_event_stream_errors_total").increment(1);
                    return None;
                }
            };
            match api_tokens::authenticate(&self.state.pg, &self.token).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::info!(token = %self.scope.name, "token revoked; event stream closed");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token check failed; closing the event stream");
                    metrics::counter!("wafleet_api_event_stream_errors_total").increment(1);
                    return None;
                }
            }
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                self.cursor = entry.id.clone();
                let Some(json) = entry
                    .map
                    .get("event")
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                else {
                    continue;
                };
                let Ok(parsed) = serde_json::from_str::<serde_json::Value>(&json) else {
                    continue;
                };
                let number = parsed["phone_number_id"].as_str();
                // A scoped token sees only events that name one of its numbers.
                if !self.scope.phone_number_ids.is_empty()
                    && !number.is_some_and(|n| self.scope.reaches(n))
                {
                    continue;
                }
                let kind = parsed["kind"].as_str().unwrap_or("event").to_string();
                self.ready
                    .push_back(Event::default().id(entry.id).event(kind).data(json));
            }
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    crate::telemetry::exposition(&state.metrics)
}

/// The OpenAPI document, served as written; `tests/openapi.rs` keeps it true to the router.
async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("openapi.yaml"),
    )
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    crate::telemetry::readiness(async { state.redis.get().await.ok() }, &state.pg)
        .await
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_body_is_described_without_the_value_it_held() {
        assert_eq!(
            without_value(
                "Failed to deserialize the JSON body into the target type: app_secrets: invalid \
                 type: string \"s3cr3t, expected x\", expected a sequence at line 1 column 24"
            ),
            "Failed to deserialize the JSON body into the target type: app_secrets: invalid \
             type, expected a sequence at line 1 column 24"
        );
        assert_eq!(
            without_value("verify_token: invalid value: integer `123456`, expected a string"),
            "verify_token: invalid value, expected a string"
        );
        let missing = "missing field `text` at line 1 column 2";
        assert_eq!(without_value(missing), missing);
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let of = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer(&headers).map(str::to_string)
        };
        for ok in [
            "Bearer wfa_1",
            "bearer wfa_1",
            "BEARER  wfa_1 ",
            " Bearer wfa_1",
        ] {
            assert_eq!(of(ok).as_deref(), Some("wfa_1"), "{ok:?}");
        }
        for none in ["Basic wfa_1", "Bearer", "Bearer  ", "Bearerwfa_1", "wfa_1"] {
            assert_eq!(of(none), None, "{none:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn only_stream_ids_resume_an_event_stream() {
        for ok in ["0-0", "1733356800000-12"] {
            assert!(is_stream_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-",
            "12",
            "12-",
            "-3",
            "a-1",
            "1-2-3",
            "$",
            "+",
            "+1-0",
            "99999999999999999999-0",
        ] {
            assert!(!is_stream_id(bad), "{bad}");
        }
    }
}
