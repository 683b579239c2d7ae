//! HTTP handlers of ingest: `/webhooks/whatsapp` (GET verify, POST updates), `/metrics`,
//! `/healthz`, `/readyz`. One [`Outcome`] per request decides the status code, the counter label
//! and the log line; internals never reach a response body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use wafleet_core::signature;
use wafleet_core::webhook;

use super::AppState;
use crate::streams::{Append, Appended};

/// How a webhook request ended. Also the `outcome` label of `wafleet_ingest_requests_total`,
/// beside three counted where the request never reaches a handler's end: `timeout`
/// (`count_timeouts`), `not_found` (the fallback handler) and `header_timeout`
/// ([`crate::serve::serve_connection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one update was enqueued (or the POST held none).
    Accepted,
    /// Every update was already enqueued by an earlier delivery.
    Duplicate,
    BadSignature,
    TooLarge,
    /// Signed, but not a WhatsApp envelope: kept whole on the dead-letter stream, answered 200.
    Malformed,
    /// Every update was for an unknown or disabled number (or a sender outside the allowlist):
    /// kept in quarantine, answered 200.
    UnknownChannel,
    /// Redis did not acknowledge in time: 503, Meta retries.
    Unavailable,
    /// The body could not be read to its end (the client went away mid-body): nothing to keep,
    /// and nothing to do with Redis being away.
    Aborted,
    /// Posted to `/webhooks/whatsapp/{app_id}` for an app no channel names: no secret to check
    /// it with. 404, Meta retries (the app's channel may be added meanwhile).
    UnknownApp,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::BadSignature => "bad_signature",
            Outcome::TooLarge => "too_large",
            Outcome::Malformed => "malformed",
            Outcome::UnknownChannel => "unknown_channel",
            Outcome::Unavailable => "unavailable",
            Outcome::Aborted => "aborted",
            Outcome::UnknownApp => "unknown_app",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Outcome::Accepted
            | Outcome::Duplicate
            | Outcome::Malformed
            | Outcome::UnknownChannel => StatusCode::OK,
            Outcome::BadSignature => StatusCode::UNAUTHORIZED,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Outcome::Aborted => StatusCode::BAD_REQUEST,
            Outcome::UnknownApp => StatusCode::NOT_FOUND,
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        // Bodies say nothing a caller could learn from: Meta ignores them anyway.
        let body = match self.status() {
            StatusCode::OK => "ok",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::PAYLOAD_TOO_LARGE => "payload too large",
            StatusCode::BAD_REQUEST => "incomplete body",
            StatusCode::NOT_FOUND => "not found",
            _ => "unavailable, retry later",
        };
        let mut res = (self.status(), body).into_response();
        if self == Outcome::Unavailable {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// `shared_path`: serve `/webhooks/whatsapp` (every app's secrets); without it that path
/// answers 404 without reading the body, and only apps' own paths serve.
pub fn router(state: AppState, request_timeout: Duration, shared_path: bool) -> Router {
    let max_body_bytes = state.max_body_bytes;
    let shared = if shared_path {
        get(verify).post(receive)
    } else {
        get(shared_path_closed).post(shared_path_closed)
    };
    Router::new()
        .route("/webhooks/whatsapp", shared)
        .route(
            "/webhooks/whatsapp/{app_id}",
            get(verify_app).post(receive_app),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Bounds a slow sender holding a connection; a 3 MB body arrives well within it.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outside the timeout: a request it cut off never reached the end of `receive`, so it
        // is counted here.
        .layer(axum::middleware::map_response(count_timeouts))
        // Behind an Arc: axum clones the state for every request, and `AppState` holds owned
        // strings (the enqueue script) that would otherwise be copied per webhook.
        .with_state(Arc::new(state))
}

/// A webhook's body. One that announces a body over `max_body_bytes` (`Content-Length`) and
/// waits for `100 Continue` before sending it (curl does for large bodies) is answered 413 at
/// once, the body never asked for: the size limit alone would ask for the body and read up to
/// the limit first. One that sends its body straight away goes to the size limit as before:
/// answered while it is still sending, it would see its connection reset instead of the 413.
/// An extractor rather than a middleware: it costs a webhook nothing but the two header reads.
enum WebhookBody {
    Read(Result<Bytes, BytesRejection>),
    /// Announced over the limit (this many bytes) by a client waiting for `100 Continue`.
    NotAskedFor(u64),
}

impl FromRequest<Arc<AppState>> for WebhookBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let headers = req.headers();
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let waits_for_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        Ok(match announced {
            Some(bytes) if waits_for_continue && bytes > state.max_body_bytes as u64 => {
                Self::NotAskedFor(bytes)
            }
            _ => Self::Read(Bytes::from_request(req, state).await),
        })
    }
}

/// Counts a webhook request by its outcome and records how long it took.
fn record(outcome: Outcome, started: Instant) {
    metrics::counter!("wafleet_ingest_requests_total", "outcome" => outcome.as_str()).increment(1);
    metrics::histogram!("wafleet_ingest_request_duration_seconds")
        .record(started.elapsed().as_secs_f64());
}

/// Counts the requests the timeout layer cut off (they never reach the end of `receive`).
async fn count_timeouts(res: Response) -> Response {
    if res.status() == StatusCode::REQUEST_TIMEOUT {
        tracing::warn!("request cut off by WAFLEET_INGEST_REQUEST_TIMEOUT_MS");
        metrics::counter!("wafleet_ingest_requests_total", "outcome" => "timeout").increment(1);
    }
    res
}

/// Any other path: a Meta callback URL with a typo (`/webhook`) would otherwise lose every
/// webhook with nothing to show for it. Counted (`outcome="not_found"`) and logged with its path
/// (at most 64 characters, never the query, which can hold a verify token), body unread.
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path: String = uri.path().chars().take(64).collect();
    tracing::info!(%method, path, "request for a path ingest does not serve");
    metrics::counter!("wafleet_ingest_requests_total", "outcome" => "not_found").increment(1);
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// The shared path with `WAFLEET_INGEST_SHARED_PATH=false`: a 404, counted, the body left
/// unread.
async fn shared_path_closed() -> Outcome {
    tracing::warn!(
        "webhook on /webhooks/whatsapp, which WAFLEET_INGEST_SHARED_PATH=false closes; \
         Meta's callback URL should name the app"
    );
    metrics::counter!("wafleet_ingest_requests_total", "outcome" => Outcome::UnknownApp.as_str())
        .increment(1);
    Outcome::UnknownApp
}

/// Meta's subscription handshake on the shared path: any enabled channel's verify token.
async fn verify(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    handshake(&state, &q, None)
}

/// The handshake on an app's own path: the verify token of one of the app's enabled channels.
async fn verify_app(
    State(state): State<Arc<AppState>>,
    Path(app_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    handshake(&state, &q, Some(&app_id))
}

fn handshake(state: &AppState, q: &HashMap<String, String>, app: Option<&str>) -> Response {
    let registry = state.registry.current();
    let ok = q.get("hub.mode").map(String::as_str) == Some("subscribe")
        && q.get("hub.verify_token").is_some_and(|t| match app {
            None => registry.verify_token_matches(t.as_bytes()),
            Some(app) => registry.app_verify_token_matches(app, t.as_bytes()),
        });
    match (ok, q.get("hub.challenge")) {
        (true, Some(challenge)) => {
            metrics::counter!("wafleet_ingest_verifications_total", "result" => "ok").increment(1);
            tracing::info!("webhook verification accepted");
            ([(header::CONTENT_TYPE, "text/plain")], challenge.clone()).into_response()
        }
        _ => {
            metrics::counter!("wafleet_ingest_verifications_total", "result" => "refused")
                .increment(1);
            tracing::warn!("webhook verification refused");
            (StatusCode::FORBIDDEN, "forbidden").into_response()
        }
    }
}

/// A POST to the shared path: checked against every app's secrets.
async fn receive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: WebhookBody,
) -> Outcome {
    receive_for(&state, None, &headers, body).await
}

/// A POST to an app's own path: checked against that app's secrets only.
async fn receive_app(
    State(state): State<Arc<AppState>>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: WebhookBody,
) -> Outcome {
    receive_for(&state, Some(&app_id), &headers, body).await
}

async fn receive_for(
    state: &AppState,
    app: Option<&str>,
    headers: &HeaderMap,
    body: WebhookBody,
) -> Outcome {
    let started = Instant::now();
    let outcome = match body {
        WebhookBody::NotAskedFor(bytes) => {
            tracing::warn!(
                bytes,
                "webhook body announced over the size limit; not asked for"
            );
            Outcome::TooLarge
        }
        WebhookBody::Read(Ok(body)) => handle(state, app, headers, body).await,
        WebhookBody::Read(Err(rejection))
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            tracing::warn!("webhook body over the size limit");
            Outcome::TooLarge
        }
        WebhookBody::Read(Err(rejection)) => {
            // The body could not even be read (client went away mid-body): nothing to keep.
            tracing::warn!(error = %rejection, "webhook body could not be read");
            Outcome::Aborted
        }
    };
    record(outcome, started);
    outcome
}

/// Bytes of hashing (the body's length times the secrets it is checked against) above which a
/// signature check leaves the request's thread: about 3 ms of CPU. A webhook Meta signed is a few
/// KB, checked inline even against a thousand apps' secrets on the shared path; a forged 3 MB
/// body checked against every app's secret is seconds of CPU.
const HEAVY_CHECK_BYTES: usize = 4 << 20;

/// Heavy signature checks run one at a time: forged bodies posted at once wait for each other
/// instead of taking every core from the webhooks Meta signed.
static HEAVY_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// [`signature::verify`] (every secret: the shared path) or [`signature::verify_among`] (`ids`,
/// one app's secrets). A check that hashes more than [`HEAVY_CHECK_BYTES`] runs on a blocking
/// thread, one at a time: on the request's thread it held that runtime thread for its whole
/// length, and with it the other requests that thread was serving (a forged 3 MB body against
/// 1,100 apps' secrets is about 2 s of CPU).
async fn check_signature(
    registry: &Arc<crate::channels::Registry>,
    body: &Bytes,
    header: Option<&[u8]>,
    ids: Option<&[usize]>,
) -> Result<usize, signature::SignatureError> {
    let check = |registry: &crate::channels::Registry,
                 body: &[u8],
                 header: Option<&[u8]>,
                 ids: Option<&[usize]>| match ids {
        None => signature::verify(body, header, &registry.secrets),
        Some(ids) => signature::verify_among(body, header, &registry.secrets, ids),
    };
    let secrets = ids.map_or(registry.secrets.len(), <[usize]>::len);
    if body.len().saturating_mul(secrets) <= HEAVY_CHECK_BYTES {
        return check(registry, body, header, ids);
    }
    let Ok(_permit) = HEAVY_CHECKS.acquire().await else {
        unreachable!("the semaphore is never closed");
    };
    let (registry, body) = (registry.clone(), body.clone());
    let header = header.map(<[u8]>::to_vec);
    let ids = ids.map(<[usize]>::to_vec);
    tokio::task::spawn_blocking(move || check(&registry, &body, header.as_deref(), ids.as_deref()))
        .await
        // The check itself cannot panic; a blocking task that did not finish (the runtime shut
        // down under it) refuses the body as any unchecked one is refused.
        .unwrap_or(Err(signature::SignatureError::Mismatch))
}

/// Bodies above this many bytes are parsed on the blocking pool: about 0.2 ms of parsing. Meta
/// batches up to 1,000 updates in one POST; parsing such a body (up to 3 MB) takes 3-6 ms, which
/// on the request's serving thread held every other connection of that thread (and with one
/// thread, every webhook) for as long.
const PARSE_INLINE_BYTES: usize = 128 * 1024;

/// [`webhook::parse`], on the blocking pool for a body over [`PARSE_INLINE_BYTES`]; the error is
/// that task's, when it did not finish.
async fn parse(
    body: &Bytes,
) -> Result<Result<webhook::Parsed, webhook::Malformed>, tokio::task::JoinError> {
    if body.len() <= PARSE_INLINE_BYTES {
        return Ok(webhook::parse(body));
    }
    let body = body.clone();
    tokio::task::spawn_blocking(move || webhook::parse(&body)).await
}

async fn handle(state: &AppState, app: Option<&str>, headers: &HeaderMap, body: Bytes) -> Outcome {
    let registry = state.registry.current();
    let header = headers
        .get("x-hub-signature-256")
        .map(HeaderValue::as_bytes);
    let checked = match app {
        None => check_signature(&registry, &body, header, None).await,
        Some(app) => match registry.app_secret_ids(app) {
            Some(ids) => check_signature(&registry, &body, header, Some(ids)).await,
            None => {
                // The path is the caller's: logged only when it is an App ID's shape.
                let shown = if app.len() <= 32 && app.bytes().all(|b| b.is_ascii_digit()) {
                    app
                } else {
                    "(not an App ID)"
                };
                tracing::warn!(app_id = shown, "webhook for an app no channel names");
                return Outcome::UnknownApp;
            }
        },
    };
    let secret_id = match checked {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(reason = %e, "webhook signature refused");
            return Outcome::BadSignature;
        }
    };
    let received_at = chrono::Utc::now().timestamp_millis();

    let mut appends = Vec::new();
    // (kind label, quarantined reason) per append, for metrics and the outcome.
    let mut labels: Vec<(&'static str, Option<&'static str>)> = Vec::new();
    let parsed = match parse(&body).await {
        Ok(parsed) => parsed,
        Err(e) => {
            // The parse never panics (a property test and a fuzz target hold it to that), so
            // this is the runtime shutting down under it: Meta retries.
            tracing::error!(bytes = body.len(), error = %e, "webhook parse did not finish; answering 503");
            return Outcome::Unavailable;
        }
    };
    let malformed = match parsed {
        Err(e) => {
            tracing::warn!(reason = %e, bytes = body.len(), "signed webhook is malformed; dead-lettered");
            appends.push(Append::dead(
                &state.keys,
                body.clone(),
                &e.full_reason(),
                received_at,
            ));
            labels.push(("dead", None));
            true
        }
        Ok(parsed) => {
            for update in &parsed.updates {
                let kind = update.kind().as_str();
                let admitted = registry.admit(update, secret_id);
                match admitted {
                    Ok(route) => {
                        appends.push(Append::update(&state.keys, update, received_at));
                        // What Meta calls the number, learnt from an update taken for
                        // processing (signed by the number's app, the channel serving): a
                        // comparison with the registry, a write only when it differs.
                        if let Some(route) = route
                            && let Some(display) = update
                                .origin()
                                .and_then(|o| o.display_phone_number.as_deref())
                        {
                            state.display_numbers.observe(route, display);
                        }
                    }
                    Err(reason) => {
                        tracing::info!(
                            phone_number_id = update.phone_number_id().unwrap_or("-"),
                            reason,
                            kind,
                            "update quarantined"
                        );
                        appends.push(Append::quarantine(
                            &state.keys,
                            update,
                            reason,
                            registry.signer_fingerprint(secret_id),
                            received_at,
                        ));
                    }
                }
                labels.push((kind, admitted.err()));
            }
            for rejected in parsed.rejected {
                tracing::warn!(reason = %rejected.reason, "webhook item rejected; dead-lettered");
                let reason = rejected.full_reason();
                appends.push(Append::dead(
                    &state.keys,
                    Bytes::from(rejected.raw),
                    &reason,
                    received_at,
                ));
                labels.push(("dead", None));
            }
            false
        }
    };

    let results = match enqueue(state, &appends).await {
        Ok(results) => results,
        Err(e) => {
            tracing::error!(error = %e, updates = appends.len(), "Redis did not acknowledge; answering 503");
            return Outcome::Unavailable;
        }
    };

    let mut added_for_processing = 0;
    let mut quarantined_only = !labels.is_empty();
    let mut all_duplicates = !results.is_empty();
    for ((kind, quarantined), result) in labels.iter().zip(&results) {
        let result_label = match (result, quarantined, *kind) {
            (Appended::Duplicate, _, _) => "duplicate",
            (Appended::Added, Some(_), _) => "quarantined",
            (Appended::Added, None, "dead") => "dead_lettered",
            (Appended::Added, None, _) => "enqueued",
        };
        metrics::counter!("wafleet_ingest_updates_total", "kind" => *kind, "result" => result_label)
            .increment(1);
        if let Some(reason) = quarantined {
            if *result == Appended::Added {
                metrics::counter!("wafleet_ingest_quarantined_total", "reason" => *reason)
                    .increment(1);
            }
        } else {
            quarantined_only = false;
        }
        if *result == Appended::Added {
            all_duplicates = false;
            if quarantined.is_none() {
                added_for_processing += 1;
            }
        }
    }
    tracing::debug!(
        updates = results.len(),
        added = added_for_processing,
        "webhook enqueued"
    );
    // Signed and JSON, but every item in it was dead-lettered: as malformed as a broken body.
    let all_dead = !labels.is_empty() && labels.iter().all(|(kind, _)| *kind == "dead");
    if malformed || all_dead {
        Outcome::Malformed
    } else if all_duplicates {
        Outcome::Duplicate
    } else if quarantined_only {
        Outcome::UnknownChannel
    } else {
        Outcome::Accepted
    }
}

/// Webhooks with more updates than this are appended on the lane's second connection
/// ([`AppState::bulk_redis`]). Redis reads a connection one buffer at a time (16 KB, more once
/// its buffer has grown) and runs the commands in it before serving its other connections with
/// input waiting, so another webhook's append waits for one such read of a batch (a dozen or so
/// appends), not for all of it.
pub const BULK_APPENDS: usize = 32;

/// The appends, on the lane's connection for their size, within `WAFLEET_REDIS_TIMEOUT_MS`. A
/// connection found gone (closed by Redis's idle `timeout`, a restart, a reset: the second
/// connection idles between batches) is replaced and the appends sent again once, within the
/// same bound: appends are idempotent, so any that went through before the connection broke
/// read as duplicates the second time.
async fn enqueue(state: &AppState, appends: &[Append]) -> anyhow::Result<Vec<Appended>> {
    let redis = if appends.len() > BULK_APPENDS {
        &state.bulk_redis
    } else {
        &state.redis
    };
    let attempt = || async {
        let mut con = redis.get().await?;
        state.enqueuer.append_all(&mut con, appends).await
    };
    let step = async {
        match attempt().await {
            Err(e) if e.is_unrecoverable_error() => {
                tracing::warn!(error = %e, "Redis connection gone; appending again on a new one");
                metrics::counter!("wafleet_ingest_redis_reconnects_total").increment(1);
                Ok::<_, anyhow::Error>(attempt().await?)
            }
            result => Ok(result?),
        }
    };
    tokio::time::timeout(state.redis_timeout, step)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {:?}", state.redis_timeout))?
}

/// Prometheus exposition, with stream lengths read at scrape time.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let streams = state.keys.all_streams();
    let lengths = async {
        let mut con = state.redis.get().await?;
        let mut pipe = redis::pipe();
        for s in &streams {
            pipe.cmd("XLEN").arg(s);
        }
        Ok::<Vec<u64>, anyhow::Error>(pipe.query_async(&mut con).await?)
    };
    match tokio::time::timeout(Duration::from_secs(1), lengths).await {
        Ok(Ok(lengths)) => {
            for (stream, len) in streams.into_iter().zip(lengths) {
                metrics::gauge!("wafleet_stream_length", "stream" => stream).set(len as f64);
            }
        }
        _ => metrics::counter!("wafleet_metrics_scrape_errors_total").increment(1),
    }
    crate::telemetry::exposition(&state.metrics)
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    // Postgres from the runtime that owns the pool (see `lanes`); Redis on the lane's connection.
    let pg = state.pg.clone();
    let pg_ok = state
        .home
        .spawn(async move { crate::telemetry::postgres_answers(&pg).await });
    crate::telemetry::readiness_of(async { state.redis.get().await.ok() }, async {
        pg_ok.await.unwrap_or(false)
    })
    .await
    .into_response()
}
